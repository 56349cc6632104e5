"""Random crop (zero padding) + horizontal flip, one version per input path;
and torchvision's flip + rotation as Keras layers (`flip_rotation`).

- `crop_flip_batch`: `tf` ops, stateless, for `tf.data` pipelines on any
  backend (TensorFlow is imported on first use);
- `crop_flip_numpy` (`crop_flip_params`, `apply_crop_flip`): NumPy, for
  `kd.data.EpochBatches` and `kd.offline`;
- `augment_batch` (`RandomCropFlip`): `keras.ops`, inside a model.

Each pads the batch with `padding` zeros, crops every image at its own
uniform offset in `0..2 * padding` on each axis and flips it with
probability 1/2, with batched gathers.
"""

import keras
import numpy as np
from keras import ops

from keras_kd._compat import tensorflow as tf


def crop_flip_batch(images, seed, padding=4):
    """Random crop + flip of an NHWC batch with `tf` ops (for `tf.data`).

    Stateless: the offsets and flips depend only on `seed`, an int64
    tensor of shape `(2,)`.
    """
    shape = tf.shape(images)
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform(
        tf.stack([shape[0], 2]), seed, 0, 2 * padding + 1, dtype="int32"
    )
    flips = tf.random.stateless_uniform(tf.stack([shape[0]]), seed + [0, 1 << 40]) < 0.5
    rows = tf.range(shape[1])[None, :] + offsets[:, :1]
    cols = tf.range(shape[2])[None, :]
    cols = tf.where(flips[:, None], shape[2] - 1 - cols, cols) + offsets[:, 1:]
    padded = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(padded, cols, axis=2, batch_dims=1)


def crop_flip_params(rng, num_images, padding=4):
    """`(offsets, flips)`: int `(n, 2)` in `0..2 * padding` and bool `(n,)`.

    `rng`: a `np.random.Generator` (or a seed for one).
    """
    rng = np.random.default_rng(rng)
    offsets = rng.integers(0, 2 * padding + 1, size=(num_images, 2))
    flips = rng.random(num_images) < 0.5
    return offsets, flips


def apply_crop_flip(images, offsets, flips, padding=4):
    """Crops NumPy NHWC `images` at `offsets` into the zero-padded batch and
    flips those where `flips` is true (see `crop_flip_params`)."""
    images = np.asarray(images)
    n, height, width = images.shape[:3]
    padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    offsets = np.asarray(offsets, "int64")
    rows = offsets[:, :1] + np.arange(height)
    cols = np.arange(width)
    cols = np.where(np.asarray(flips)[:, None], width - 1 - cols, cols)
    cols = cols + offsets[:, 1:]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def crop_flip_numpy(images, rng, padding=4):
    """Random crop + flip of an NHWC NumPy batch.

    `rng`: a `np.random.Generator` (or a seed for one). Works on any dtype
    (uint8 before normalisation pads with black, as `crop_flip_batch` on
    pixel values does).

    Example:

    ```python
    out = crop_flip_numpy(images, np.random.default_rng([0, step]))
    ```
    """
    offsets, flips = crop_flip_params(rng, len(images), padding)
    return apply_crop_flip(images, offsets, flips, padding)


def augment_batch(images, seed_generator, padding=4):
    """Random crop with zero padding and horizontal flip of an NHWC batch.

    Each image gets its own offset (0 to `2 * padding` on each axis) into
    the padded batch and is flipped with probability 1/2, all in one gather
    with `keras.ops`, so it runs inside compiled train steps on any backend.

    Example:

    ```python
    seed_generator = keras.random.SeedGenerator(0)
    images = augment_batch(images, seed_generator)
    ```
    """
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1:]
    padded_height, padded_width = height + 2 * padding, width + 2 * padding
    padded = ops.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = keras.random.randint((batch, 2), 0, 2 * padding + 1, seed=seed_generator)
    flip = keras.random.uniform((batch, 1), seed=seed_generator) < 0.5
    cols = ops.arange(width)
    cols = ops.where(flip, width - 1 - cols, cols) + offsets[:, 1:]
    rows = ops.arange(height) + offsets[:, :1]
    index = ops.arange(batch)[:, None, None] * padded_height + rows[:, :, None]
    index = index * padded_width + cols[:, None, :]
    return ops.take(ops.reshape(padded, (-1, channels)), index, axis=0)


@keras.saving.register_keras_serializable(package="keras_kd")
class RandomCropFlip(keras.layers.Layer):
    """Random crop (zero padding `padding`) and horizontal flip in training.

    The identity at inference. See `augment_batch`.

    Example:

    ```python
    inputs = keras.Input((32, 32, 3))
    x = RandomCropFlip(padding=4)(inputs)
    ```
    """

    def __init__(self, padding=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        return augment_batch(inputs, self.seed_generator, self.padding)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class RandomPaddedCrop(keras.layers.Layer):
    """torchvision's `RandomCrop(size, padding)`: pad, crop at random.

    In training each image is padded by `padding` pixels of `fill_value`
    on every side and cropped back to its size at its own uniform offset;
    at inference the layer is the identity. `fill_value` (a scalar or one
    value per channel) is 0, black, for images in pixel units; for
    normalised images pass the normalised black, `−mean / std`, so the
    padding is black as torchvision pads before `Normalize`. Cropping is a
    product with one-hot row and column selectors, so it runs on every
    backend.

    Example:

    ```python
    x = RandomPaddedCrop(4)(images, training=True)
    ```
    """

    def __init__(self, padding, fill_value=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding
        self.fill_value = (
            float(fill_value)
            if np.ndim(fill_value) == 0
            else [float(v) for v in fill_value]
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        p = self.padding
        height, width = inputs.shape[1:3]
        fill = ops.cast(self.fill_value, inputs.dtype)
        pad = ((0, 0), (p, p), (p, p), (0, 0))
        border = 1 - ops.pad(ops.ones_like(inputs[:1, ..., :1]), pad)
        padded = ops.pad(inputs, pad) + border * fill  # Exact inside.
        offsets = keras.random.randint(
            (ops.shape(inputs)[0], 2), 0, 2 * p + 1, seed=self.seed_generator
        )
        rows = ops.one_hot(
            offsets[:, :1] + ops.arange(height), height + 2 * p, dtype=inputs.dtype
        )
        cols = ops.one_hot(
            offsets[:, 1:] + ops.arange(width), width + 2 * p, dtype=inputs.dtype
        )
        return ops.einsum("bih,bhwc,bjw->bijc", rows, padded, cols)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "padding": self.padding,
            "fill_value": self.fill_value,
            "seed": self.seed,
        }


def flip_rotation(degrees=15.0, fill_value=0.0, seed=None):
    """Random horizontal flip, then a rotation within `±degrees`, in training.

    torchvision's `RandomHorizontalFlip()` and `RandomRotation(degrees)`
    (the ReffAKD Fashion-MNIST notebooks' augmentation): each image is
    flipped with probability 1/2 and rotated about its centre by a uniform
    angle, nearest neighbour, the corners filled with `fill_value` (for
    normalised images the normalised black, `-mean / std`, as torchvision
    fills with black before `Normalize`). Keras' `RandomFlip` and
    `RandomRotation` layers, seeded `seed` and `seed + 1` (one seed would
    draw each image's flip and angle from the same numbers, so flipped
    images would turn one way only); the identity at inference.

    Example:

    ```python
    augment = flip_rotation(15, fill_value=-mean / std, seed=0)
    images = augment(images, training=True)
    ```
    """
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(
                degrees / 360.0,
                fill_mode="constant",
                interpolation="nearest",
                fill_value=float(fill_value),
                seed=None if seed is None else seed + 1,
            ),
        ],
        name="flip_rotation",
    )
