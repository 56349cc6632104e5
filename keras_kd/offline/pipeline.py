"""Replaying a record: batches of recorded crops with recorded targets.

Batch `i` of the stream is step `i % steps` of training epoch
`i // steps`, which replays recorded epoch `(i // steps) % record.epochs`:
its examples in the epoch's shuffled order (seeded by the record's seed),
each cropped and flipped with its recorded parameters, so the student sees
exactly the images the teacher saw. The stream is indexed, not stateful,
so it gives the same batches however often Keras restarts it; pass
`steps_per_epoch=kd.offline.steps_per_epoch(...)` to `fit`.
"""

import warnings

import keras
import numpy as np

from keras_kd.data.common import epoch_order
from keras_kd.data.common import steps_per_epoch
from keras_kd.offline import manifest as manifest_lib
from keras_kd.offline.augment import CropFlip
from keras_kd.offline.store import Record


class _Replay:
    """Batch `i` of the replayed stream, as NumPy arrays."""

    def __init__(
        self,
        x,
        y,
        batch_size,
        record=None,
        augmentation=None,
        seed=None,
        epochs=None,
        shuffle=True,
        drop_remainder=False,
        targets=True,
        initial_epoch=0,
    ):
        if record is not None:
            if augmentation is not None or seed is not None:
                raise ValueError(
                    "Give either a record (its augmentation and seed are "
                    "replayed) or augmentation= and seed=, not both."
                )
            record = record if isinstance(record, Record) else Record.load(record)
            if manifest_lib.data_fingerprint(x, y) != record.manifest["dataset"]:
                raise ValueError(
                    f"The data differ from the data the record at "
                    f"'{record.path}' was made from (sha256 or size); pass "
                    f"the same (x, y) arrays, in the same order."
                )
            augmentation = CropFlip.from_config(record.manifest["augmentation"])
            seed = record.manifest["seed"]
        elif augmentation is None or seed is None:
            raise ValueError(
                "Give a record, or augmentation= and seed= for a live stream."
            )
        elif targets:
            raise ValueError(
                "A live stream (no record) has no targets; pass targets=False."
            )
        self.record, self.augmentation, self.seed = record, augmentation, seed
        self.x, self.y = x, np.asarray(y)
        self.batch_size = int(batch_size)
        self.shuffle, self.targets = shuffle, targets
        self.steps = steps_per_epoch(len(x), self.batch_size, drop_remainder)
        recorded = record.epochs if record is not None else None
        self.epochs = int(epochs or recorded or 1)
        self.initial_epoch = int(initial_epoch)
        if not 0 <= self.initial_epoch < self.epochs:
            raise ValueError(
                f"initial_epoch must be in [0, {self.epochs}) (epochs="
                f"{self.epochs}), got {initial_epoch!r}."
            )
        if recorded is not None and self.epochs > recorded:
            warnings.warn(
                f"Training for {self.epochs} epochs on a record of "
                f"{recorded}: epoch e replays recorded epoch e mod {recorded} "
                f"(the same crops and targets again).",
                stacklevel=3,
            )
        self._cache = {}

    def _epoch(self, epoch):
        if self.record is not None:
            epoch = epoch % self.record.epochs
        if epoch not in self._cache:
            n = len(self.x)
            if self.record is not None:
                arrays = self.record.arrays[epoch]
            else:
                arrays = self.augmentation.sample(self.seed, epoch, n)
            order = epoch_order(n, epoch, self.seed, self.shuffle)
            self._cache = {epoch: (order, arrays)}
        return self._cache[epoch]

    def __len__(self):
        return (self.epochs - self.initial_epoch) * self.steps

    def batch(self, index):
        epoch, step = divmod(int(index), self.steps)
        epoch += self.initial_epoch
        order, arrays = self._epoch(epoch)
        rows = order[step * self.batch_size : (step + 1) * self.batch_size]
        images = self.augmentation.apply(
            self.x[rows],
            {"offsets": arrays["offsets"][rows], "flip": arrays["flip"][rows]},
        )
        if not self.targets:
            return images, self.y[rows]
        inputs = {"inputs": images}
        inputs.update({key: arrays[key][rows] for key in self.record.target_keys})
        return inputs, self.y[rows]


def dataset(
    x,
    y,
    batch_size,
    record=None,
    augmentation=None,
    seed=None,
    epochs=None,
    shuffle=True,
    drop_remainder=False,
    targets=True,
    initial_epoch=0,
):
    """A `tf.data` stream of `({"inputs", targets...}, labels)` batches.

    With `record` (a path or `kd.offline.Record`) it replays the record;
    with `augmentation` and `seed` instead it yields the same kind of
    stream for a live teacher (`targets=False`: plain image batches), e.g.
    to compare a recorded run with a live one. `epochs` defaults to the
    record's; more epochs than recorded cycle through the record (with a
    warning). `initial_epoch` starts the stream at that epoch, for a
    `fit(..., initial_epoch=...)` that resumes training; a new `fit` call
    on the same stream otherwise starts again at epoch 0. Usable with every
    Keras backend.

    Example:

    ```python
    ds = kd.offline.dataset(x, y, 64, record="rec", epochs=2)
    distiller.fit(ds, epochs=2,
                  steps_per_epoch=kd.offline.steps_per_epoch(len(x), 64))
    ```
    """
    replay = _Replay(
        x,
        y,
        batch_size,
        record,
        augmentation,
        seed,
        epochs,
        shuffle,
        drop_remainder,
        targets,
        initial_epoch,
    )
    return tf_dataset(replay)


def tf_dataset(replay):
    """A `tf.data` stream of `replay.batch(i)` for `i < len(replay)`
    (NumPy structures, batched along their first axis)."""
    from keras_kd._compat import tensorflow as tf

    sample = replay.batch(0)
    flat = keras.tree.flatten(sample)

    def load(index):
        return keras.tree.flatten(replay.batch(index))

    def fetch(index):
        values = tf.numpy_function(
            load, [index], [tf.as_dtype(v.dtype) for v in flat], stateful=False
        )
        for value, like in zip(values, flat):
            value.set_shape((None,) + like.shape[1:])
        return tuple(keras.tree.pack_sequence_as(sample, values))

    ds = tf.data.Dataset.range(len(replay))
    return ds.map(
        fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)


class ReplayPyDataset(keras.utils.PyDataset):
    """The `dataset` stream as a NumPy `keras.utils.PyDataset`.

    Item `i` is batch `i` of epochs `initial_epoch..epochs-1`; pass
    `steps_per_epoch=kd.offline.steps_per_epoch(...)` to `fit`.

    Example:

    ```python
    data = kd.offline.ReplayPyDataset(x, y, 64, record="rec")
    distiller.fit(data, epochs=2, steps_per_epoch=data.steps)
    ```
    """

    def __init__(
        self,
        x,
        y,
        batch_size,
        record=None,
        augmentation=None,
        seed=None,
        epochs=None,
        shuffle=True,
        drop_remainder=False,
        targets=True,
        initial_epoch=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._replay = _Replay(
            x,
            y,
            batch_size,
            record,
            augmentation,
            seed,
            epochs,
            shuffle,
            drop_remainder,
            targets,
            initial_epoch,
        )
        self.steps = self._replay.steps

    def __len__(self):
        return len(self._replay)

    def __getitem__(self, index):
        return self._replay.batch(index)
