"""A resumable, deterministic training loop for students and Distillers.

`fit_resumable` fits a `keras.Model` (a student or a `kd.Distiller`) for a
number of epochs with a checkpoint per epoch: rerunning the same call after
a kill resumes at the last finished epoch and gives the same weights as an
uninterrupted run (each epoch's batch order depends only on the seed and
the epoch). It writes a CSV log, TensorBoard logs when TensorBoard is
installed, and returns a results dict (last/best test accuracy, wall time,
images/s). No absl: the recipes in `keras_kd.cli` and notebooks share it.

Example:

```python
import keras_kd as kd

data = kd.training.Data.from_arrays(x, y, x_test, y_test)
config = kd.training.TrainConfig(epochs=20, batch_size=32, lr=3e-3)
result = kd.training.fit_resumable("distilled", distiller, data, x, y,
                                   config, out_dir="runs/notebook")
print(result["last_epoch_test_accuracy"], result["images_per_second"])
```
"""

import csv
import dataclasses
import json
import math
import os
import time
import warnings

import numpy as np

from keras_kd.callbacks import TrainTimer
from keras_kd.data import pipeline
from keras_kd.data import pydataset


def tensorboard_available():
    """Whether TensorBoard logs can be written (the `tensorboard` package)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


TENSORBOARD_MISSING = (
    "TensorBoard is not installed, so no TensorBoard logs are written (the "
    "CSV log is); `pip install tensorboard` to get them.")


@dataclasses.dataclass
class TrainConfig:
    """The training protocol of `fit_resumable`.

    `lr_decay_epochs`: epochs at which the learning rate is multiplied by
    0.1. `replicas`: devices a batch is split over (each epoch's partial
    batch is then dropped).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    lr_decay_epochs: list = dataclasses.field(default_factory=list)
    replicas: int = 1

    @classmethod
    def from_dict(cls, cfg, lr):
        """From a recipe's resolved settings (extra keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"lr"}
        return cls(lr=lr, **{k: v for k, v in cfg.items() if k in names})


@dataclasses.dataclass
class Data:
    """A dataset's splits (uint8 NHWC images) and its normalisation."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_arrays(cls, x, y, x_test, y_test, info=None, mean=None,
                    std=None):
        """Splits with `mean`/`std` per channel (default: pixels / 255)."""
        channels = x.shape[-1]
        mean = np.zeros(channels, "float32") if mean is None else mean
        std = np.full(channels, 255.0, "float32") if std is None else std
        return cls(x, y, x_test, y_test, dict(info or {}), mean, std)

    def normalize(self, images):
        return ((images.astype("float32") - self.mean) / self.std).astype(
            "float32")


def steps_per_epoch(n, config):
    """Batches per epoch: the last one partial, unless on several replicas."""
    if config.replicas > 1:
        # Every batch must split evenly over the replicas (JAX's
        # DataParallel refuses otherwise): drop each epoch's partial batch.
        return max(1, n // config.batch_size)
    return max(1, math.ceil(n / config.batch_size))


def make_optimizer(config, steps):
    """SGD (momentum) or Adam with the step schedule of `config`."""
    import keras

    lr = config.lr
    boundaries = [e * steps for e in config.lr_decay_epochs]
    schedule = lr
    if boundaries:
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [lr * 0.1**i for i in range(len(boundaries) + 1)])
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=config.momentum)
    return keras.optimizers.Adam(schedule)


def _read_backup_epoch(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def _truncate_csv(path, first_epoch):
    """Drops CSV rows of epochs that the resumed run will repeat."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < first_epoch]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit_resumable(name, model, data, x, y, config, out_dir, seed=0,
                  host_augment=False, jit_compile=False, verbose=0,
                  tensorboard=True, log=print, input_pipeline="auto",
                  workers=4):
    """Fits `model` (a student or a Distiller) with checkpoint/resume.

    Args:
        name: the phase, a folder of `out_dir`.
        model: an uncompiled keras.Model returning logits, or a Distiller.
        data: a `Data` (test split and normalisation).
        x, y: the training images (uint8) and labels.
        config: a `TrainConfig`.
        seed: seeds the per-epoch batch order and `host_augment`.
        host_augment: random crop (4-pixel padding) + flip on the host.
        input_pipeline: `"tfdata"` (`kd.data.epoch_batches`), `"numpy"`
            (`kd.data.EpochBatches`, a PyDataset: no TensorFlow needed) or
            `"auto"` (see `kd.data.resolve_input_pipeline`). Both give
            the same batch order; their random crops differ.
        workers: threads preparing `"numpy"` batches.
        tensorboard: also write TensorBoard logs (skipped with a warning
            when TensorBoard is not installed).
        log: where progress lines go (`print`; `None` for silence).

    Writes `<out_dir>/<name>/`: `log.csv` (every loss term and the test
    accuracy per epoch), `tensorboard/`, `backup/` while running, and
    `result.json` when done. A finished phase is not retrained: its weights
    are loaded from `weights.weights.h5`.
    """
    log = log or (lambda message: None)
    import keras

    phase_dir = os.path.join(out_dir, name)
    result_path = os.path.join(phase_dir, "result.json")
    weights_path = os.path.join(phase_dir, "weights.weights.h5")
    os.makedirs(phase_dir, exist_ok=True)
    steps = steps_per_epoch(len(x), config)
    model.compile(
        optimizer=make_optimizer(config, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        # Several steps per call cut the per-step overhead of small models.
        steps_per_execution=min(steps, 8),
    )
    if os.path.exists(result_path):
        model.load_weights(weights_path)
        with open(result_path) as f:
            result = json.load(f)
        log(f"[{name}] already trained; loaded from {phase_dir}.")
        return result
    backup_dir = os.path.join(phase_dir, "backup")
    first_epoch = _read_backup_epoch(backup_dir)
    log_path = os.path.join(phase_dir, "log.csv")
    _truncate_csv(log_path, first_epoch)
    if first_epoch:
        log(f"[{name}] resuming at epoch {first_epoch + 1}/{config.epochs}"
              f" from {backup_dir}.")
    else:
        log(f"[{name}] training {config.epochs} epochs on {len(x)} images.")
    if pydataset.resolve_input_pipeline(input_pipeline) == "numpy":
        train_ds = pydataset.EpochBatches(
            x, y, config.batch_size, steps, first_epoch, seed,
            augment=host_augment, normalize=(data.mean, data.std),
            workers=workers)
        fit_steps = None  # The PyDataset is one epoch long.
    else:
        train_ds = pipeline.epoch_batches(
            x, y, config.batch_size, steps, config.epochs, first_epoch, seed,
            augment=host_augment, normalize=(data.mean, data.std))
        fit_steps = steps
    test = (data.normalize(data.x_test), data.y_test)
    timer = TrainTimer()
    callbacks = [
        # Two checkpoints, so a kill while one is written falls back to the
        # previous epoch's.
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        keras.callbacks.CSVLogger(log_path, append=True),
        timer,
    ]
    if tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(phase_dir, "tensorboard"), write_graph=False))
    elif tensorboard:
        warnings.warn(TENSORBOARD_MISSING, stacklevel=2)
    start = time.perf_counter()
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=fit_steps,
        shuffle=False,  # train_ds shuffles itself, deterministically.
        validation_data=test,
        validation_batch_size=256,
        callbacks=callbacks,
        verbose=verbose,
    )
    wall = time.perf_counter() - start
    model.save_weights(weights_path)
    rows = _read_csv(log_path)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = int(np.argmax(accuracies))
    trained_epochs = config.epochs - first_epoch
    result = {
        "last_epoch_test_accuracy": accuracies[-1],
        "best_epoch_test_accuracy": accuracies[best],
        "best_epoch": best + 1,
        "epochs": len(rows),
        "train_images": int(len(x)),
        "wall_seconds": wall,
        "train_seconds": timer.seconds,
        "images_per_second": (len(x) * trained_epochs / timer.seconds
                              if timer.seconds else None),
        "resumed_at_epoch": first_epoch,
        "final_losses": {k: float(v) for k, v in rows[-1].items()
                         if k not in ("epoch",)},
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result

