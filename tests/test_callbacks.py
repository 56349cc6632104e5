"""kd.callbacks.StopOnNonFiniteLoss: stops before a checkpoint is written,
without reading every batch's logs."""

import keras
import numpy as np
import pytest

import keras_kd as kd


class _EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(epoch)


def _fit(stop, epochs=2):
    x = np.ones((64, 3), "float32")
    x[40] = np.nan  # Batch 3 of 4 (batch size 16) has a NaN loss.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    ends = _EpochEnds()
    with pytest.raises(FloatingPointError) as error:
        model.fit(
            x,
            np.zeros(64),
            batch_size=16,
            epochs=epochs,
            callbacks=[stop, ends],
            shuffle=False,
            verbose=0,
        )
    return str(error.value), ends.ends


@pytest.mark.multi_backend
def test_stops_at_epoch_end_before_later_callbacks():
    message, ends = _fit(kd.callbacks.StopOnNonFiniteLoss(check_every=0))
    assert ends == []  # A checkpoint callback after it never ran.
    assert "epoch 1, end" in message and "'loss'" in message


@pytest.mark.multi_backend
def test_checks_batches_every_n():
    message, _ = _fit(kd.callbacks.StopOnNonFiniteLoss(check_every=2))
    assert "epoch 1, batch 4" in message  # Checked at batches 2 and 4.
    message, _ = _fit(kd.callbacks.StopOnNonFiniteLoss(check_every=1))
    assert "epoch 1, batch 3" in message
    assert kd.callbacks.StopOnNonFiniteLoss.async_safe
