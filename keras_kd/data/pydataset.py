"""Host input pipelines without TensorFlow: `keras.utils.PyDataset`s.

`EpochBatches` serves the batches of `epoch_batches` (the same per-epoch
order, `epoch_order`) as a `keras.utils.PyDataset`, so training runs on JAX
or PyTorch where TensorFlow is not installed. Its augmentation,
`crop_flip_numpy`, has the semantics of `crop_flip_batch`: zero padding 4,
a uniform offset in `0..8` per axis and image, a horizontal flip with
probability 1/2. It draws from NumPy's generator seeded with
`(seed, batch index counted from epoch 0)`, so the batches depend only on the
seed and the epoch (a resumed run sees those of an uninterrupted one) but are
not the pixels `tf.random` draws.

Example:

```python
train = kd.data.EpochBatches(x, y, batch_size=128, augment=True,
                             normalize=kd.data.channel_stats(x), workers=4)
model.fit(train, epochs=10)
```
"""

import importlib.util

import keras

from keras_kd.data.augment import crop_flip_numpy
from keras_kd.data.common import epoch_order
from keras_kd.data.common import mean_std
from keras_kd.data.common import steps_per_epoch

INPUT_PIPELINES = ("auto", "tfdata", "numpy")


def tensorflow_available():
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def resolve_input_pipeline(name="auto"):
    """`"tfdata"` or `"numpy"` for `name` in `INPUT_PIPELINES`.

    `"auto"` is `"tfdata"` where TensorFlow is installed (on every backend,
    as before this option existed) and `"numpy"` (`EpochBatches`) where it
    is not. `"tfdata"` without TensorFlow is refused.
    """
    if name not in INPUT_PIPELINES:
        raise ValueError(
            f"input_pipeline must be one of {INPUT_PIPELINES}, got {name!r}."
        )
    if name == "auto":
        return "tfdata" if tensorflow_available() else "numpy"
    if name == "tfdata" and not tensorflow_available():
        raise ValueError(
            "input_pipeline='tfdata' needs TensorFlow, which is not "
            "installed: pass input_pipeline='numpy' (or 'auto')."
        )
    return name


class EpochBatches(keras.utils.PyDataset):
    """Normalised `(images, labels)` batches, one epoch per pass.

    Epoch `e` (counted from `first_epoch`, advanced by `on_epoch_end`) reads
    the images in the order `epoch_order(len(x), e, seed)` gives it, in
    `steps` batches (default: every image, the last batch partial; with
    `drop_remainder`, full batches only). `shuffle=False` keeps `x`'s order
    (evaluation). With `augment`, batch `i` of epoch `e` is cropped and
    flipped with the seed `(seed, e * steps + i)`, as `epoch_batches`
    counts. `normalize=(mean, std)` on the 0..255 scale (None: pixels /
    255). With `example_index`, inputs are `{"inputs": images,
    "example_index": positions in x}` (see `with_example_index`).
    `workers`, `use_multiprocessing`, `max_queue_size`: as
    `keras.utils.PyDataset` (threads by default; every batch is a pure
    function of its index, so workers change nothing but speed).

    Use it with `fit(dataset, epochs=...)` and no `steps_per_epoch`.
    """

    def __init__(
        self,
        x,
        y,
        batch_size,
        steps=None,
        first_epoch=0,
        seed=0,
        augment=False,
        normalize=None,
        shuffle=True,
        drop_remainder=False,
        example_index=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y {len(y)} labels.")
        most = steps_per_epoch(len(x), batch_size)
        if steps is None:
            steps = steps_per_epoch(len(x), batch_size, drop_remainder)
        if not 0 < steps <= most:
            raise ValueError(
                f"steps={steps} batches of {batch_size} do not fit {len(x)} "
                f"images; pass at most {most} (or a smaller batch_size)."
            )
        self.x, self.y = x, y
        self.batch_size, self.steps = batch_size, steps
        self.epoch, self.seed = first_epoch, seed
        self.augment, self.shuffle = augment, shuffle
        self.example_index = example_index
        self.mean, self.std = mean_std(normalize)
        self._order = None

    def __len__(self):
        return self.steps

    def _epoch_indices(self):
        if self._order is None or self._order[0] != self.epoch:
            order = epoch_order(len(self.x), self.epoch, self.seed, self.shuffle)
            self._order = (self.epoch, order)
        return self._order[1]

    def __getitem__(self, index):
        if not 0 <= index < self.steps:
            raise IndexError(f"Batch {index} of {self.steps}.")
        start = index * self.batch_size
        batch = self._epoch_indices()[start : start + self.batch_size]
        images = self.x[batch]
        if self.augment:
            images = crop_flip_numpy(
                images, [self.seed, self.epoch * self.steps + index]
            )
        images = ((images.astype("float32") - self.mean) / self.std).astype("float32")
        labels = self.y[batch]
        if self.example_index:
            return {"inputs": images, "example_index": batch.astype("int32")}, labels
        return images, labels

    def on_epoch_end(self):
        self.epoch += 1
