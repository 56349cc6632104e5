"""Callbacks: stop on a non-finite loss, drive the terms' epoch schedules,
and time the training batches.

Example:

```python
import keras_kd as kd

timer = kd.callbacks.TrainTimer()
model.fit(x, y, epochs=2, callbacks=[timer, kd.callbacks.StopOnNonFiniteLoss()])
print(len(x) * timer.epochs / timer.seconds, "images/s")
```
"""

import math
import time

import keras


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with an error naming the loss term that is NaN/Inf.

    `kd.Distiller.fit` adds one watching every loss term unless the
    Distiller is built with `stop_on_nonfinite_loss=False`.

    Args:
        names: the logged losses to watch (default: `["loss"]`).
    """

    def __init__(self, names=None):
        super().__init__()
        self.names = list(names or ["loss"])
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = {
            name: float(logs[name])
            for name in self.names
            if name in (logs or {}) and not math.isfinite(float(logs[name]))
        }
        if bad:
            raise FloatingPointError(
                f"Non-finite loss at epoch {self.epoch + 1}, batch {batch + 1}:"
                f" {bad}. Training stopped: the last update may already have "
                f"written NaN into the weights, so restore them from a "
                f"checkpoint. Check the inputs for NaN/Inf, lower the learning "
                f"rate, or use a LossScaleOptimizer under mixed_float16."
            )


class TermEpochs(keras.callbacks.Callback):
    """Tells each term the epoch about to start (`term.on_epoch_begin`).

    Drives epoch schedules held by terms (DKD's warm-up, CTKD's λ); Keras
    passes the absolute epoch, so `fit(initial_epoch=k)` resumes them.
    `kd.Distiller.fit` adds one; a custom training loop calls
    `term.on_epoch_begin(epoch)` itself.

    Args:
        terms: the `kd.losses.DistillationTerm`s to notify.
    """

    def __init__(self, terms):
        super().__init__()
        self.terms = list(terms)

    def on_epoch_begin(self, epoch, logs=None):
        for term in self.terms:
            term.on_epoch_begin(epoch)


class TrainTimer(keras.callbacks.Callback):
    """Seconds spent in training batches, validation excluded.

    `seconds` sums each epoch's time up to its validation (or its end);
    `epochs` counts the epochs timed.
    """

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self.epochs = 0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.epochs += 1
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()
