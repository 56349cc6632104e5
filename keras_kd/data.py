"""Image classification data: loaders, tf.data pipelines, augmentation.

`load` returns NumPy arrays (`x` uint8 NHWC, `y` int64) from scikit-learn's
digits, a folder of `.npz` files, or tensorflow-datasets. `make_dataset`
turns them into a shuffled, augmented, normalised `tf.data` pipeline (usable
with every Keras backend), and `RandomCropFlip` does the same augmentation
inside a model with `keras.ops`.
"""

import json
import os
import re

import keras
import numpy as np
from keras import ops
from keras.src.utils.module_utils import tensorflow as tf

# Loading.


def load(name, data_dir=None, split_seed=0):
    """Loads a dataset as `((x_train, y_train), (x_test, y_test), info)`.

    `x` is uint8 NHWC, `y` int64, and `info` a dict with `num_classes`,
    `class_names`, `input_shape` and `source`. `name` is one of:

    - `"digits"`: scikit-learn's 8x8 digits, scaled to 0..255, split 75/25,
      stratified, with `split_seed`;
    - `"npz:PATH"`: a folder with `train.npz` and `test.npz` (or numbered
      parts `train_0.npz`, `train_1.npz`, ...) holding `x` (uint8 NHWC or
      NHW) and `y` (integers), or `jpeg` (concatenated JPEG files),
      `offsets` (int, N + 1) and `y`. JPEGs are decoded with
      `tf.io.decode_jpeg` using the accurate integer DCT, which gives the
      same pixels as Pillow. Class names come from `meta.json` (`"classes"`)
      when present;
    - any other name: a tensorflow-datasets dataset with `train` and `test`
      splits, read from (or downloaded to) `data_dir`.

    Example:

    ```python
    (x, y), (x_test, y_test), info = keras_kd.data.load("npz:data/mnist")
    ```
    """
    if name == "digits":
        return _load_digits(split_seed)
    if name.startswith("npz:"):
        return _load_npz(name[len("npz:"):])
    return _load_tfds(name, data_dir)


def _info(num_classes, class_names, input_shape, source):
    return {
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "input_shape": tuple(int(d) for d in input_shape),
        "source": source,
    }


def _load_digits(split_seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype("uint8")[..., None]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=split_seed
    )
    info = _info(10, [str(i) for i in range(10)], x.shape[1:],
                 "sklearn.datasets.load_digits")
    return (x_train, y_train), (x_test, y_test), info


def _load_npz(path):
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"npz dataset folder '{path}' does not exist.")
    class_names = None
    meta_path = os.path.join(path, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            class_names = json.load(f).get("classes")
    num_classes = len(class_names) if class_names else None
    (x_train, y_train), (x_test, y_test) = (
        _read_npz_split(path, split, num_classes) for split in ("train", "test")
    )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"In '{path}', train images have shape {x_train.shape[1:]} but "
            f"test images {x_test.shape[1:]}."
        )
    if class_names is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        class_names = [str(i) for i in range(num_classes)]
    info = _info(num_classes, class_names, x_train.shape[1:], f"npz:{path}")
    return (x_train, y_train), (x_test, y_test), info


def _read_npz_split(path, split, num_classes):
    single = os.path.join(path, f"{split}.npz")
    parts = {}
    for file in os.listdir(path):
        match = re.fullmatch(rf"{split}_(\d+)\.npz", file)
        if match:
            parts[int(match.group(1))] = os.path.join(path, file)
    if os.path.exists(single) and parts:
        raise ValueError(
            f"'{path}' has both {split}.npz and numbered {split}_N.npz parts; "
            f"keep one layout."
        )
    if os.path.exists(single):
        files = [single]
    elif parts:
        missing = sorted(set(range(max(parts) + 1)) - set(parts))
        if missing:
            raise FileNotFoundError(
                f"'{path}' lacks part {split}_{missing[0]}.npz (parts must be "
                f"numbered from 0 without gaps)."
            )
        files = [parts[i] for i in sorted(parts)]
    else:
        raise FileNotFoundError(
            f"'{path}' has neither {split}.npz nor {split}_0.npz, "
            f"{split}_1.npz, ..."
        )
    arrays = [_read_npz_file(file, num_classes) for file in files]
    shapes = {x.shape[1:] for x, _ in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"The {split} parts in '{path}' hold images of different shapes: "
            f"{sorted(shapes)}."
        )
    return np.concatenate([x for x, _ in arrays]), np.concatenate(
        [y for _, y in arrays]
    )


def _read_npz_file(file, num_classes):
    with np.load(file) as data:
        keys = set(data.files)
        if "y" not in keys or not ("x" in keys or {"jpeg", "offsets"} <= keys):
            raise ValueError(
                f"{file} holds keys {sorted(keys)}; expected 'x' and 'y' "
                f"(or 'jpeg', 'offsets' and 'y')."
            )
        y = data["y"]
        x = data["x"] if "x" in keys else _decode_jpegs(
            file, data["jpeg"], data["offsets"]
        )
    if x.dtype != np.uint8:
        raise ValueError(f"{file}: 'x' must be uint8 images, got {x.dtype}.")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{file}: 'x' must have rank 4 (N, H, W, C) or 3 (N, H, W), got "
            f"shape {x.shape}."
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{file}: 'y' must be a vector of integer labels, got {y.dtype} "
            f"of shape {y.shape}."
        )
    if len(x) != len(y):
        raise ValueError(f"{file}: {len(x)} images but {len(y)} labels.")
    bad = (y < 0) | (y >= num_classes if num_classes else False)
    if bad.any():
        valid = f"0..{num_classes - 1}" if num_classes else "non-negative"
        raise ValueError(
            f"{file}: label {y[bad][0]} at index {np.flatnonzero(bad)[0]} is "
            f"out of range (valid: {valid})."
        )
    return x, y.astype("int64")


def _decode_jpegs(file, jpeg, offsets):
    if offsets.ndim != 1 or np.any(np.diff(offsets) <= 0) or (
        offsets[-1] > len(jpeg)
    ):
        raise ValueError(
            f"{file}: 'offsets' must increase and stay within 'jpeg' "
            f"({len(jpeg)} bytes)."
        )
    # The accurate integer DCT matches Pillow (libjpeg's default); TF's
    # default fast DCT shifts channel means by about one level.
    def decode(string):
        return tf.io.decode_jpeg(string, dct_method="INTEGER_ACCURATE")

    strings = [jpeg[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    images = tf.data.Dataset.from_tensor_slices(strings).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE
    )
    return np.concatenate([batch.numpy() for batch in images.batch(4096)])


def _load_tfds(name, data_dir):
    import tensorflow_datasets as tfds

    try:
        (train, test), builder_info = tfds.load(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            as_supervised=True,
            batch_size=-1,
            with_info=True,
        )
    except tfds.core.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown dataset '{name}': use 'digits', 'npz:PATH' (a folder of "
            f"train/test .npz files) or a tensorflow-datasets name, and "
            f"'{name}' is not a known tensorflow-datasets name."
        ) from e
    label = builder_info.features[builder_info.supervised_keys[1]]
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(train), tfds.as_numpy(
        test
    )
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    info = _info(label.num_classes, label.names, x_train.shape[1:],
                 f"tensorflow_datasets:{name}")
    return (
        (x_train, y_train.astype("int64")),
        (x_test, y_test.astype("int64")),
        info,
    )


# Pipelines and augmentation.


def channel_stats(x):
    """Per-channel mean and standard deviation of NHWC images, as float32.

    Example:

    ```python
    mean, std = channel_stats(x_train)
    ds = make_dataset(x_train, y_train, 128, True, normalize=(mean, std))
    ```
    """
    channels = x.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(x), 4096):
        chunk = x[start:start + 4096].reshape(-1, channels).astype("float64")
        total += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
    count = x.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.astype("float32"), std.astype("float32")


def with_example_index(x):
    """`{"inputs": x, "example_index": 0..len(x)-1}` for terms that need it.

    Instance-level terms such as `kd.losses.ContrastiveRepresentation`
    (CRD) keep one memory slot per training image and read the batch's
    dataset positions; the Distiller feeds `"inputs"` to the models.

    Example:

    ```python
    distiller.fit(kd.data.with_example_index(x_train), y_train, epochs=5)
    ```
    """
    if isinstance(x, dict):
        raise ValueError(
            "with_example_index takes the image array itself, not a dict."
        )
    return {"inputs": x, "example_index": np.arange(len(x), dtype="int32")}


def make_dataset(x, y, batch_size, training, seed=0, augment=None,
                 normalize=None, cache=True, example_index=False):
    """A `tf.data` pipeline of `(float32 images, labels)` batches.

    Caches the uint8 data, and for training shuffles it (with `seed`, in a
    new order each epoch), applies random crop (4-pixel zero padding) and
    horizontal flip when `augment` is true, and drops the last partial
    batch. Images are normalised per channel with `normalize=(mean, std)`
    (on the 0..255 scale, see `channel_stats`), or scaled to 0..1 when
    `normalize` is None. With `example_index`, the inputs are
    `{"inputs": images, "example_index": positions in x}` (see
    `with_example_index`).

    Example:

    ```python
    train_ds = make_dataset(x, y, 128, training=True, augment=True,
                            normalize=channel_stats(x))
    model.fit(train_ds, epochs=10)
    ```
    """
    if example_index:  # Carried with the labels through the maps below.
        y = (y, np.arange(len(x), dtype="int32"))
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        if augment:
            seeds = tf.data.Dataset.random(
                seed=seed, rerandomize_each_iteration=True
            ).batch(4)
            ds = tf.data.Dataset.zip(ds, seeds).map(
                _crop_flip, num_parallel_calls=tf.data.AUTOTUNE
            )
    ds = ds.batch(batch_size, drop_remainder=training)
    if normalize is None:
        mean, std = np.zeros(1, "float32"), np.full(1, 255.0, "float32")
    else:
        mean, std = (np.asarray(v, "float32") for v in normalize)

    def scale(images, labels):
        return (tf.cast(images, "float32") - mean) / std, labels

    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if example_index:
        ds = ds.map(lambda images, labels: (
            {"inputs": images, "example_index": labels[1]}, labels[0]
        ))
    return ds.prefetch(tf.data.AUTOTUNE)


def _crop_flip(example, seeds, padding=4):
    image, label = example
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seeds[:2])
    image = tf.image.stateless_random_flip_left_right(image, seeds[2:])
    return image, label


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
    padded = ops.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    offsets = keras.random.randint(
        (batch, 2), 0, 2 * padding + 1, seed=seed_generator
    )
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


# Class subsets.


class ClassMapping:
    """How a class subset's labels `0..k-1` map to the original classes.

    Example:

    ```python
    mapping.to_original(np.argmax(model.predict(x), axis=-1))
    ```
    """

    def __init__(self, original_ids, names):
        self.original_ids = np.asarray(original_ids, "int64")
        self.names = list(names)

    def to_original(self, pred_ids):
        """Original class ids of subset labels (an array of the same shape)."""
        return self.original_ids[np.asarray(pred_ids)]

    def __repr__(self):
        pairs = ", ".join(
            f"{i}->{o} ({n})"
            for i, (o, n) in enumerate(zip(self.original_ids, self.names))
        )
        return f"ClassMapping({pairs})"


def class_subset(data, classes, max_per_class=None, seed=0, class_names=None):
    """Keeps the examples of `classes`, relabelled `0..len(classes) - 1`.

    `data` is `(x, y)` arrays or an unbatched `tf.data.Dataset` of `(x, y)`;
    `classes` lists original class ids, or names when `class_names` is
    given. Returns `(subset, ClassMapping)`, the subset of the same kind as
    `data`. With arrays the examples keep their order and `max_per_class`
    picks a random (`seed`) subset of each class; with a dataset it keeps
    the first `max_per_class` of each class in stream order (shuffle the
    dataset beforehand for a random pick), and without `class_names` class
    ids are only checked to be non-negative.

    Example:

    ```python
    (x, y), mapping = class_subset((x, y), ["cat", "dog"],
                                   class_names=info["class_names"])
    mapping.to_original([0, 1])  # array([3, 5])
    ```
    """
    if max_per_class is not None and (
        int(max_per_class) != max_per_class or max_per_class < 1
    ):
        raise ValueError(
            f"max_per_class must be a positive integer or None, got "
            f"{max_per_class!r}."
        )
    is_dataset = not isinstance(data, (tuple, list)) and isinstance(
        data, tf.data.Dataset
    )
    if is_dataset:
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2
                and spec[1].shape.rank == 0):
            raise ValueError(
                f"class_subset expects an unbatched dataset of (x, y) with "
                f"scalar labels; got element_spec {spec}."
            )
        num_classes = len(class_names) if class_names else None
    else:
        x, y = data
        y = np.asarray(y)
        num_classes = len(class_names) if class_names else int(y.max()) + 1
    ids = _class_ids(classes, class_names, num_classes)
    names = [class_names[i] for i in ids] if class_names else [str(i) for i in ids]
    mapping = ClassMapping(ids, names)
    if is_dataset:
        return _dataset_subset(data, ids, max_per_class), mapping
    rng = np.random.default_rng(seed)
    keep = []
    for class_id in ids:
        index = np.flatnonzero(y == class_id)
        if not len(index):
            raise ValueError(
                f"Class {class_id!r} has no examples in the data; present "
                f"classes: {np.unique(y).tolist()}."
            )
        if max_per_class is not None and len(index) > max_per_class:
            index = rng.choice(index, max_per_class, replace=False)
        keep.append(index)
    keep = np.sort(np.concatenate(keep))
    lookup = np.full(max(ids) + 1, -1, "int64")
    lookup[ids] = np.arange(len(ids))
    return (np.asarray(x)[keep], lookup[y[keep]]), mapping


def _class_ids(classes, class_names, num_classes):
    ids = []
    for c in classes:
        if isinstance(c, str):
            if not class_names or c not in class_names:
                valid = (f"valid names: {list(class_names)}" if class_names
                         else "pass class_names= to select classes by name")
                raise ValueError(f"Unknown class {c!r}; {valid}.")
            c = list(class_names).index(c)
        elif not isinstance(c, (int, np.integer)) or c < 0 or (
            num_classes is not None and c >= num_classes
        ):
            valid = (f"0..{num_classes - 1}" if num_classes is not None
                     else "non-negative integers")
            raise ValueError(f"Unknown class {c!r}; valid class ids: {valid}.")
        ids.append(int(c))
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"classes must be distinct and non-empty; got {classes}.")
    return ids


def _dataset_subset(ds, ids, max_per_class):
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, "int64"), tf.range(len(ids), dtype="int64")
        ),
        default_value=-1,
    )
    ds = ds.map(lambda x, y: (x, table.lookup(tf.cast(y, "int64"))))
    ds = ds.filter(lambda x, y: y >= 0)
    if max_per_class is None:
        return ds

    def count(counts, example):
        _, y = example
        counts = tf.tensor_scatter_nd_add(counts, [[y]], [1])
        return counts, (example, counts[y])

    ds = ds.scan(tf.zeros(len(ids), "int64"), count)
    ds = ds.filter(lambda example, seen: seen <= max_per_class)
    return ds.map(lambda example, seen: example)


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
        self.fill_value = (float(fill_value) if np.ndim(fill_value) == 0
                           else [float(v) for v in fill_value])
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
            (ops.shape(inputs)[0], 2), 0, 2 * p + 1, seed=self.seed_generator)
        rows = ops.one_hot(offsets[:, :1] + ops.arange(height), height + 2 * p,
                           dtype=inputs.dtype)
        cols = ops.one_hot(offsets[:, 1:] + ops.arange(width), width + 2 * p,
                           dtype=inputs.dtype)
        return ops.einsum("bih,bhwc,bjw->bijc", rows, padded, cols)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "padding": self.padding,
                "fill_value": self.fill_value, "seed": self.seed}
