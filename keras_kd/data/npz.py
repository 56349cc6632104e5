"""The `npz:PATH` loader: a folder of `train`/`test` `.npz` files."""

import json
import os
import re

import numpy as np

from keras_kd._compat import tensorflow as tf
from keras_kd.data.common import dataset_info
from keras_kd.data.pydataset import tensorflow_available


def load_npz(path):
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
    info = dataset_info(num_classes, class_names, x_train.shape[1:], f"npz:{path}")
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
            f"'{path}' has neither {split}.npz nor {split}_0.npz, {split}_1.npz, ..."
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
        x = (
            data["x"]
            if "x" in keys
            else _decode_jpegs(file, data["jpeg"], data["offsets"])
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
    if offsets.ndim != 1 or np.any(np.diff(offsets) <= 0) or (offsets[-1] > len(jpeg)):
        raise ValueError(
            f"{file}: 'offsets' must increase and stay within 'jpeg' "
            f"({len(jpeg)} bytes)."
        )
    strings = [jpeg[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    if not tensorflow_available():
        return _decode_with_pillow(strings)

    # The accurate integer DCT matches Pillow (libjpeg's default) closely;
    # TF's default fast DCT shifts channel means by about one level.
    def decode(string):
        return tf.io.decode_jpeg(string, dct_method="INTEGER_ACCURATE")

    images = tf.data.Dataset.from_tensor_slices(strings).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE
    )
    return np.concatenate([batch.numpy() for batch in images.batch(4096)])


def _decode_with_pillow(strings):
    """JPEG bytes to one uint8 array with Pillow, in threads (Pillow's
    decoder releases the GIL); used where TensorFlow is not installed."""
    import concurrent.futures
    import io

    from PIL import Image

    def decode(string):
        with Image.open(io.BytesIO(string)) as image:
            return np.asarray(image)

    with concurrent.futures.ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(decode, strings, chunksize=256)))
