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
import os
import time
import warnings

import numpy as np

from keras_kd.callbacks import TrainTimer
from keras_kd.data import common as data_common
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
    "CSV log is); `pip install tensorboard` to get them."
)


@dataclasses.dataclass
class TrainConfig:
    """The training protocol of `fit_resumable`.

    `lr_decay_epochs`: epochs at which the learning rate is multiplied by
    `lr_decay_factor` (0.1; PyTorch `MultiStepLR`'s `gamma`).
    `weight_decay`: PyTorch's coupled L2 on every trainable variable the
    optimizer updates (`keras_kd.optimizers`); build the models without
    kernel regularizers then. `replicas`: devices a batch is split over
    (each epoch's partial batch is then dropped).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    lr_decay_epochs: list = dataclasses.field(default_factory=list)
    lr_decay_factor: float = 0.1
    replicas: int = 1
    weight_decay: float = 0.0

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
    def from_arrays(cls, x, y, x_test, y_test, info=None, mean=None, std=None):
        """Splits with `mean`/`std` per channel (default: pixels / 255)."""
        channels = x.shape[-1]
        mean = np.zeros(channels, "float32") if mean is None else mean
        std = np.full(channels, 255.0, "float32") if std is None else std
        return cls(x, y, x_test, y_test, dict(info or {}), mean, std)

    def normalize(self, images):
        return ((images.astype("float32") - self.mean) / self.std).astype("float32")


def steps_per_epoch(n, config):
    """Batches per epoch: the last one partial, unless on several replicas."""
    # Every batch must split evenly over the replicas (JAX's DataParallel
    # refuses otherwise): drop each epoch's partial batch.
    return max(
        1,
        data_common.steps_per_epoch(
            n, config.batch_size, drop_remainder=config.replicas > 1
        ),
    )


def step_schedule(learning_rate, decay_epochs, factor, steps_per_epoch):
    """PyTorch's `MultiStepLR` stepped once per epoch, as a Keras schedule:
    the rate times `factor` once more from the first batch of each epoch in
    `decay_epochs` (0-based).

    Example:

    ```python
    schedule = step_schedule(0.1, [2, 4], 0.2, steps_per_epoch=100)
    schedule(199), schedule(200)  # 0.1, 0.02
    ```
    """
    import keras

    if not decay_epochs:
        return learning_rate
    # The update at iteration i uses the rate at i, and the schedule keeps
    # a value up to and including its boundary: the epoch's last step.
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [e * steps_per_epoch - 1 for e in decay_epochs],
        [learning_rate * factor**i for i in range(len(decay_epochs) + 1)],
    )


def make_optimizer(config, steps):
    """SGD (momentum) or Adam with the step schedule of `config` and its
    coupled weight decay on every trainable variable.

    Example:

    ```python
    config = TrainConfig(epochs=10, batch_size=128, lr=0.1, optimizer="sgd",
                         lr_decay_epochs=[3, 6], lr_decay_factor=0.2)
    optimizer = make_optimizer(config, steps=469)  # 0.1, 0.02, 0.004
    ```
    """
    from keras_kd import optimizers

    schedule = step_schedule(
        config.lr, config.lr_decay_epochs, config.lr_decay_factor, steps
    )
    if config.optimizer == "sgd":
        return optimizers.SGD(
            schedule, momentum=config.momentum, l2=config.weight_decay
        )
    return optimizers.Adam(schedule, l2=config.weight_decay)


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


def side_inputs(model):
    """The batch entries besides the images that `model` reads: a
    Distiller's `side_input_names` (none for a plain model), e.g.
    `["example_index"]` for CRD."""
    return list(getattr(model, "side_input_names", []))


def _indexed_batches(
    x, y, batch_size, steps, epochs, first_epoch, seed, augment, normalize
):
    """`epoch_batches` whose inputs are `{"inputs", "example_index"}`.

    The positions travel as a second label column, so the batches (order,
    crops) are exactly `epoch_batches`' own.
    """
    from keras_kd._compat import tensorflow as tf

    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"Example indices are supplied for integer class labels of shape "
            f"(n,); got labels of shape {y.shape} and dtype {y.dtype}."
        )
    labels = np.stack([y.astype("int64"), np.arange(len(y), dtype="int64")], axis=1)
    ds = pipeline.epoch_batches(
        x,
        labels,
        batch_size,
        steps,
        epochs,
        first_epoch,
        seed,
        augment=augment,
        normalize=normalize,
    )
    return ds.map(
        lambda images, both: (
            {"inputs": images, "example_index": both[:, 1]},
            both[:, 0],
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def fit_resumable(
    name,
    model,
    data,
    x,
    y,
    config,
    out_dir,
    seed=0,
    host_augment=False,
    jit_compile=False,
    verbose=0,
    tensorboard=True,
    log=print,
    batches=None,
    input_pipeline="auto",
    workers=4,
):
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
        batches: None for `kd.data.epoch_batches` (with `"example_index"`
            in the inputs when the model's terms read it, see
            `side_inputs`); or a function `(first_epoch, steps)` returning
            the batches of epochs `first_epoch..config.epochs - 1`, each
            epoch's depending only on the epoch (e.g. a
            `kd.offline.dataset` replay), so that resuming changes nothing.

    Writes `<out_dir>/<name>/`: `log.csv` (every loss term and the test
    accuracy per epoch), `tensorboard/`, `backup/` while running, and
    `result.json` when done (with `load_average`, the 1-minute load before
    and after training: times measured beside other jobs are void). A
    finished phase is not retrained: its weights are loaded from
    `weights.weights.h5`.
    """
    log = log or (lambda message: None)
    indexed = batches is None and _reads_example_index(name, model)
    phase_dir = os.path.join(out_dir, name)
    result_path = os.path.join(phase_dir, "result.json")
    weights_path = os.path.join(phase_dir, "weights.weights.h5")
    os.makedirs(phase_dir, exist_ok=True)
    steps = steps_per_epoch(len(x), config)
    _compile(model, config, steps, jit_compile)
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
        log(
            f"[{name}] resuming at epoch {first_epoch + 1}/{config.epochs}"
            f" from {backup_dir}."
        )
    else:
        log(f"[{name}] training {config.epochs} epochs on {len(x)} images.")
    train_ds, fit_steps = _train_batches(
        batches,
        data,
        x,
        y,
        config,
        steps,
        first_epoch,
        seed,
        host_augment,
        input_pipeline,
        workers,
        indexed,
    )
    test = (data.normalize(data.x_test), data.y_test)
    timer = TrainTimer()
    callbacks = _callbacks(phase_dir, backup_dir, log_path, timer, tensorboard)
    load_before = _load_average()
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
    result = _result(
        _read_csv(log_path),
        len(x),
        config.epochs - first_epoch,
        first_epoch,
        wall,
        timer.seconds,
    )
    # Times taken beside other jobs are void: the load says which.
    result["load_average"] = [load_before, _load_average()]
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def _load_average():
    """The machine's 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _reads_example_index(name, model):
    """Whether the default pipeline must add example indices to the inputs;
    raises when `model` reads side inputs that it cannot supply."""
    needed = side_inputs(model)
    unknown = [n for n in needed if n != "example_index"]
    if unknown:
        raise ValueError(
            f"{name}: the model reads {unknown} from each batch, which "
            f"the default pipeline cannot supply (it supplies "
            f"'example_index'); pass `batches=` yielding them."
        )
    return "example_index" in needed


def _compile(model, config, steps, jit_compile):
    """Compiles with `config`'s optimizer, cross-entropy and accuracy."""
    import keras

    model.compile(
        optimizer=make_optimizer(config, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        # Several steps per call cut the per-step overhead of small models
        # (the torch backend allows only one).
        steps_per_execution=(
            1
            if keras.backend.backend() == "torch"
            else data_common.steps_per_call(steps)
        ),
    )


def _train_batches(
    batches,
    data,
    x,
    y,
    config,
    steps,
    first_epoch,
    seed,
    host_augment,
    input_pipeline,
    workers,
    indexed,
):
    """The training batches from `first_epoch` on, and the steps per epoch
    to give `fit` (None for a PyDataset, which is one epoch long)."""
    numpy_path = pydataset.resolve_input_pipeline(input_pipeline) == "numpy"
    if batches is not None:
        return batches(first_epoch, steps), steps
    normalize = (data.mean, data.std)
    if numpy_path and not indexed:
        return pydataset.EpochBatches(
            x,
            y,
            config.batch_size,
            steps,
            first_epoch,
            seed,
            augment=host_augment,
            normalize=normalize,
            workers=workers,
        ), None
    if numpy_path:
        raise ValueError(
            "The terms read example indices, which only the tf.data "
            "pipeline supplies; use input_pipeline='tfdata'."
        )
    make = _indexed_batches if indexed else pipeline.epoch_batches
    return make(
        x,
        y,
        config.batch_size,
        steps,
        config.epochs,
        first_epoch,
        seed,
        augment=host_augment,
        normalize=normalize,
    ), steps


def _callbacks(phase_dir, backup_dir, log_path, timer, tensorboard):
    """Checkpoint, CSV log, timer and (when installed) TensorBoard."""
    import keras

    callbacks = [
        # The epoch's log row is written before its checkpoint: a kill in
        # between leaves a row that resuming truncates, never a checkpoint
        # without its row.
        keras.callbacks.CSVLogger(log_path, append=True),
        # Two checkpoints, so a kill while one is written falls back to the
        # previous epoch's.
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        timer,
    ]
    if tensorboard and tensorboard_available():
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(phase_dir, "tensorboard"), write_graph=False
            )
        )
    elif tensorboard:
        # Attributed to the caller of `fit_resumable`.
        warnings.warn(TENSORBOARD_MISSING, stacklevel=3)
    return callbacks


def _result(rows, num_images, trained_epochs, first_epoch, wall, seconds):
    """The results dict of a finished phase from its CSV log `rows`."""
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = int(np.argmax(accuracies))
    return {
        "last_epoch_test_accuracy": accuracies[-1],
        "best_epoch_test_accuracy": accuracies[best],
        "best_epoch": best + 1,
        "epochs": len(rows),
        "train_images": int(num_images),
        "wall_seconds": wall,
        "train_seconds": seconds,
        "images_per_second": (
            num_images * trained_epochs / seconds if seconds else None
        ),
        "resumed_at_epoch": first_epoch,
        "final_losses": {
            k: float(v) for k, v in rows[-1].items() if k not in ("epoch",)
        },
    }
