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
    Distiller is built with `stop_on_nonfinite_loss=False`, ahead of the
    caller's callbacks, so its epoch-end check runs before a checkpoint
    (`keras.callbacks.BackupAndRestore`, `ModelCheckpoint`) is written.

    Cheap: it checks the batch logs every `check_every` batches and the
    epoch's mean losses at its end (a NaN in any batch makes the mean
    NaN). It is `async_safe`, so when no other callback reads batch logs,
    Keras reads them in a worker thread and the train step never waits for
    the host; an error raised there surfaces at the next batch or, at the
    latest, before any callback's `on_epoch_end`.

    Args:
        names: the logged losses to watch (default: `["loss"]`).
        check_every: batches between batch-log checks (0: epoch end only).
    """

    async_safe = True

    def __init__(self, names=None, check_every=10):
        super().__init__()
        self.names = list(names or ["loss"])
        self.check_every = int(check_every)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.check_every and (batch + 1) % self.check_every == 0:
            self._check(logs, f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "end (the epoch's mean loss)")

    def _check(self, logs, where):
        bad = {
            name: float(logs[name])
            for name in self.names
            if name in (logs or {}) and not math.isfinite(float(logs[name]))
        }
        if bad:
            raise FloatingPointError(
                f"Non-finite loss at epoch {self.epoch + 1}, {where}: {bad}. "
                f"Training stopped before this epoch's checkpoint: the last "
                f"updates may already have written NaN into the weights, so "
                f"restore them from a checkpoint. Check the inputs for "
                f"NaN/Inf, lower the learning rate, or use a "
                f"LossScaleOptimizer under mixed_float16."
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
