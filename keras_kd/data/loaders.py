"""Dataset loaders: scikit-learn's digits, `.npz` folders, tensorflow-datasets.

Every loader returns `((x_train, y_train), (x_test, y_test), info)` with
`x` uint8 NHWC, `y` int64 and `info` a dict (`num_classes`, `class_names`,
`input_shape`, `source`).
"""

import numpy as np

from keras_kd.data.common import dataset_info
from keras_kd.data.npz import load_npz


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
      `tf.io.decode_jpeg` (accurate integer DCT) where TensorFlow is
      installed and with Pillow where it is not; the two differ by a few
      levels (at most 5/255) on many pixels, so compare runs of one
      decoder. Class names come from `meta.json` (`"classes"`)
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
        return load_npz(name[len("npz:") :])
    return _load_tfds(name, data_dir)


def resize_images(images, size, batch_size=4096):
    """uint8 NHWC `images` resized to `size = (height, width)`, as uint8.

    Bilinear (Keras' `Resizing` layer, no antialiasing), rounded to the
    nearest level: torchvision's `T.Resize(size)` of PIL images when
    enlarging them, e.g. Fashion-MNIST's 28x28 to the 32x32 of ReffAKD's
    notebooks. Images already of that size are returned unchanged.

    Example:

    ```python
    x32 = resize_images(x28, (32, 32))
    ```
    """
    import keras

    images = np.asarray(images)
    size = tuple(int(s) for s in size)
    if images.shape[1:3] == size:
        return images
    resize = keras.layers.Resizing(*size, interpolation="bilinear")
    out = np.empty((len(images), *size, images.shape[-1]), "uint8")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].astype("float32")
        resized = keras.ops.convert_to_numpy(resize(chunk))
        out[start : start + batch_size] = np.clip(np.round(resized), 0, 255)
    return out


def _load_digits(split_seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype("uint8")[..., None]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=split_seed
    )
    info = dataset_info(
        10, [str(i) for i in range(10)], x.shape[1:], "sklearn.datasets.load_digits"
    )
    return (x_train, y_train), (x_test, y_test), info


def _load_tfds(name, data_dir):
    """A tensorflow-datasets dataset as NumPy arrays, read in batches (not
    whole splits, which `tfds.testing.mock_data` cannot serve)."""
    import tensorflow_datasets as tfds

    try:
        (train, test), builder_info = tfds.load(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            as_supervised=True,
            with_info=True,
        )
    except tfds.core.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown dataset '{name}': use 'digits', 'npz:PATH' (a folder "
            f"of train/test .npz files) or a tensorflow-datasets name, and "
            f"'{name}' is not a known tensorflow-datasets name."
        ) from e

    def arrays(ds):
        xs, ys = [], []
        for images, labels in tfds.as_numpy(ds.batch(4096)):
            xs.append(images)
            ys.append(labels)
        x, y = np.concatenate(xs), np.concatenate(ys).astype("int64")
        return (x[..., None] if x.ndim == 3 else x), y

    (x, y), (x_test, y_test) = arrays(train), arrays(test)
    if x.dtype != np.uint8:
        raise ValueError(f"'{name}' images are {x.dtype}; keras_kd takes uint8 images.")
    label = builder_info.features[builder_info.supervised_keys[1]]
    info = dataset_info(
        label.num_classes, label.names, x.shape[1:], f"tensorflow_datasets:{name}"
    )
    return (x, y), (x_test, y_test), info
