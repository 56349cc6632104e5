"""FixMatch's RandAugment with Cutout, per image, with `keras.ops`.

The strong view of MLKD (Jin et al., CVPR 2023): the official
`mdistiller/dataset/cifar100.py` (Jin-Ying/Multi-Level-Logit-Distillation,
l.144-305) applies to each PIL image two operations drawn with replacement
from 14, each at a magnitude drawn uniformly from its range (the `m=10` of
`RandAugment(2, 10)` is unused), then a Cutout of a random size up to half
the width. The operations follow PIL's on 8-bit pixels: nearest-neighbour
geometry with black fill, `ImageEnhance` blends, `ImageOps` look-up tables.

`apply_operation` and `cutout` are the deterministic parts (tested against
PIL); `RandAugmentCutout` draws their arguments inside a compiled step.
"""

import math

import keras
import numpy as np
from keras import ops

#: `(name, low, high)` of the official `augment_list()`, in its order.
OPERATIONS = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)
_INDEX = {name: i for i, (name, _, _) in enumerate(OPERATIONS)}
#: The official Cutout colour (`CutoutAbs`), in 8-bit RGB.
CUTOUT_COLOR = (125.0, 123.0, 114.0)


def _per_image(value):
    return ops.reshape(value, (-1, 1, 1, 1))


def _luma(images):
    """PIL's `convert("L")`: ITU-R 601-2 in its 16-bit fixed point,
    rounded; non-RGB images: the image."""
    if images.shape[-1] != 3:
        return images
    weights = ops.convert_to_tensor([19595.0, 38470.0, 7471.0], "float32")
    weighted = ops.sum(images * weights, axis=-1, keepdims=True)
    return ops.floor((weighted + 32768.0) / 65536.0)


def _blend(degenerate, images, factor):
    """`ImageEnhance`: `degenerate + factor · (image − degenerate)`,
    truncated to an integer as `Image.blend` does."""
    blend = degenerate + _per_image(factor) * (images - degenerate)
    return ops.floor(ops.clip(blend, 0, 255))


def _contrast(images, factor):
    # The grey level is the rounded mean of the luma image.
    mean = ops.floor(ops.mean(_luma(images), axis=(1, 2, 3), keepdims=True) + 0.5)
    return _blend(mean, images, factor)


def _sharpness(images, factor):
    """Blend with PIL's SMOOTH filter (3×3 ones, centre 5, / 13, borders kept)."""
    height, width = images.shape[1:3]
    padded = ops.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
    total = 4.0 * images
    for dy in range(3):
        for dx in range(3):
            total = total + padded[:, dy : dy + height, dx : dx + width, :]
    rows, cols = ops.arange(height), ops.arange(width)
    inner = ops.logical_and(
        ops.logical_and(rows > 0, rows < height - 1)[:, None],
        ops.logical_and(cols > 0, cols < width - 1)[None, :],
    )
    smooth = ops.where(inner[None, :, :, None], ops.round(total / 13.0), images)
    return _blend(smooth, images, factor)


def _auto_contrast(images, factor):
    """Each channel's [min, max] stretched to [0, 255]; flat ones kept."""
    del factor
    low = ops.min(images, axis=(1, 2), keepdims=True)
    high = ops.max(images, axis=(1, 2), keepdims=True)
    scale = 255.0 / ops.where(high > low, high - low, 1.0)
    stretched = ops.clip(ops.floor(images * scale - low * scale), 0, 255)
    return ops.where(high > low, stretched, images)


def _equalize(images, factor):
    """`ImageOps.equalize` per image and channel, with its look-up table:
    `lut[i] = (step // 2 + #{pixels below bin i}) // step`, `step` the
    pixels outside the top bin // 255; one bin or `step = 0`: unchanged."""
    del factor
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1:]
    bins = ops.cast(ops.clip(ops.floor(images), 0, 255), "int32")
    groups = ops.reshape(
        ops.arange(batch * channels, dtype="int32"), (-1, 1, 1, channels)
    )
    ids = groups * 256 + bins
    histogram = ops.segment_sum(
        ops.ones((batch * height * width * channels,), "float32"),
        ops.reshape(ids, (-1,)),
        num_segments=batch * channels * 256,
    )
    histogram = ops.reshape(histogram, (-1, channels, 256))
    below = ops.cumsum(histogram, axis=-1) - histogram
    top = ops.max(bins, axis=(1, 2))
    top_count = ops.take_along_axis(histogram, top[..., None], axis=-1)[..., 0]
    step = ops.floor((height * width - top_count) / 255.0)
    lut = ops.floor(
        (ops.floor(step / 2.0)[..., None] + below) / ops.maximum(step, 1.0)[..., None]
    )
    mapped = ops.take(ops.reshape(ops.minimum(lut, 255.0), (-1,)), ids)
    keep = ops.logical_or(top == ops.min(bins, axis=(1, 2)), step == 0)
    return ops.where(keep[:, None, None, :], images, mapped)


def _posterize(images, bits):
    """Keep the top `int(bits)` bits of each 8-bit value."""
    quantum = _per_image(2.0 ** (8.0 - ops.clip(ops.floor(bits), 1, 8)))
    return ops.floor(images / quantum) * quantum


_PIXEL_OPERATIONS = {
    "auto_contrast": _auto_contrast,
    "brightness": lambda x, v: _blend(0.0, x, v),
    "color": lambda x, v: _blend(_luma(x), x, v),
    "contrast": _contrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": lambda x, v: ops.where(x < _per_image(v), x, 255.0 - x),
}


def _affine(index, magnitude, height, width):
    """Per image, PIL's inverse affine map `(a, b, c, d, e, f)` of the
    geometric operations (identity for the others): output pixel `(x, y)`
    reads input `(a·x + b·y + c, d·x + e·y + f)`."""

    def is_(name):
        return index == _INDEX[name]

    zero, one = ops.zeros_like(magnitude), ops.ones_like(magnitude)
    # Image.rotate(v): counter-clockwise by v degrees about (w/2, h/2).
    angle = -magnitude * (math.pi / 180.0)
    cos, sin = ops.cos(angle), ops.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    rotate = is_("rotate")
    a = ops.where(rotate, cos, one)
    b = ops.where(rotate, sin, ops.where(is_("shear_x"), magnitude, zero))
    d = ops.where(rotate, -sin, ops.where(is_("shear_y"), magnitude, zero))
    e = ops.where(rotate, cos, one)
    c = ops.where(
        rotate,
        cx - a * cx - b * cy,
        ops.where(is_("translate_x"), magnitude * width, zero),
    )
    f = ops.where(
        rotate,
        cy - d * cx - e * cy,
        ops.where(is_("translate_y"), magnitude * height, zero),
    )
    return a, b, c, d, e, f


def _warp(images, matrix):
    """PIL's `Image.transform(AFFINE, NEAREST)`: each output pixel centre
    mapped by `matrix`, floored; outside the image: black."""
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1:]
    a, b, c, d, e, f = [ops.reshape(m, (-1, 1, 1)) for m in matrix]
    x = ops.arange(width, dtype="float32")[None, None, :] + 0.5
    y = ops.arange(height, dtype="float32")[None, :, None] + 0.5
    source_x = ops.floor(a * x + b * y + c)
    source_y = ops.floor(d * x + e * y + f)
    inside = ops.logical_and(
        ops.logical_and(source_x >= 0, source_x < width),
        ops.logical_and(source_y >= 0, source_y < height),
    )
    source_x = ops.cast(ops.clip(source_x, 0, width - 1), "int32")
    source_y = ops.cast(ops.clip(source_y, 0, height - 1), "int32")
    rows = ops.arange(batch, dtype="int32")[:, None, None] * height + source_y
    pixels = ops.take(ops.reshape(images, (-1, channels)), rows * width + source_x, 0)
    return ops.where(inside[..., None], pixels, 0.0)


def apply_operation(images, index, magnitude):
    """Each image's operation `OPERATIONS[index]` at `magnitude`.

    `images`: float NHWC in 8-bit units `[0, 255]`; `index` int `(batch,)`;
    `magnitude` float `(batch,)` in the operation's range. The result is
    rounded to integers, as PIL's 8-bit images are.

    Example:

    ```python
    index = ops.full((n,), OPERATIONS.index(("rotate", -30.0, 30.0)))
    rotated = apply_operation(images, index, ops.full((n,), 10.0))
    ```
    """
    images = ops.cast(images, "float32")
    index = ops.cast(index, "int32")
    magnitude = ops.cast(magnitude, "float32")
    height, width = images.shape[1:3]
    out = _warp(images, _affine(index, magnitude, height, width))
    for name, operation in _PIXEL_OPERATIONS.items():
        out = ops.where(
            _per_image(index == _INDEX[name]), operation(images, magnitude), out
        )
    return ops.round(out)


def cutout(images, size, centre_x, centre_y, color=CUTOUT_COLOR):
    """The official `CutoutAbs`: a `size`-pixel square filled with `color`.

    Per image, `x0 = int(max(0, centre_x − size/2))`, `x1 = min(W, x0 +
    size)` (the same in y), and PIL's rectangle fills columns `x0..int(x1)`
    and rows `y0..int(y1)`, both ends included. `size ≤ 0` leaves the
    image. `color`: 3 values for RGB; other images get its luma.
    """
    images = ops.cast(images, "float32")
    height, width, channels = images.shape[1:]
    size, centre_x, centre_y = [
        ops.reshape(ops.cast(v, "float32"), (-1, 1)) for v in (size, centre_x, centre_y)
    ]
    x0 = ops.floor(ops.maximum(0.0, centre_x - size / 2.0))
    y0 = ops.floor(ops.maximum(0.0, centre_y - size / 2.0))
    x1 = ops.floor(ops.minimum(float(width), x0 + size))
    y1 = ops.floor(ops.minimum(float(height), y0 + size))
    cols = ops.arange(width, dtype="float32")[None, :]
    rows = ops.arange(height, dtype="float32")[None, :]
    in_cols = ops.logical_and(cols >= x0, cols <= x1)
    in_rows = ops.logical_and(rows >= y0, rows <= y1)
    box = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])
    box = ops.logical_and(box, size[:, :, None] > 0)
    color = np.asarray(color, "float32")
    if channels != 3:
        color = np.full((channels,), color @ np.array([0.299, 0.587, 0.114]), "float32")
    return ops.where(box[..., None], ops.convert_to_tensor(color), images)


@keras.saving.register_keras_serializable(package="keras_kd")
class RandAugmentCutout(keras.layers.Layer):
    """MLKD's strong augmentation: FixMatch's RandAugment, then Cutout.

    In training each image gets `num_ops` operations of `OPERATIONS`
    (drawn uniformly with replacement, each at a uniform magnitude of its
    range; see `apply_operation`), then a Cutout of side `u · cutout · W`,
    `u ~ U[0, 1)`, centred at `(U(1, W), U(1, H))` (the official
    `np.random.uniform(w)` draws from `(1, w]`). At inference: the identity.

    The operations work on 8-bit pixels: inputs `(pixels − mean) / std`
    are mapped back to `[0, 255]` (rounded) and the result normalised
    again; `mean`, `std` are scalars or one value per channel (e.g. from
    `kd.data.channel_stats` of uint8 images; inputs in `[0, 1]`:
    `mean=0, std=255`).

    Example:

    ```python
    strong = RandAugmentCutout(mean=mean, std=std, seed=0)
    views = strong(images, training=True)
    ```
    """

    def __init__(self, num_ops=2, cutout=0.5, mean=0.0, std=1.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(num_ops) != num_ops or num_ops < 0:
            raise ValueError(f"num_ops must be a non-negative integer, got {num_ops}.")
        if not 0 <= cutout <= 1:
            raise ValueError(f"cutout must be in [0, 1], got {cutout}.")
        if np.any(np.asarray(std) <= 0):
            raise ValueError(f"std must be positive, got {std}.")
        self.num_ops = int(num_ops)
        self.cutout = float(cutout)
        self.mean = _floats(mean)
        self.std = _floats(std)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        if len(inputs.shape) != 4:
            raise ValueError(
                f"RandAugmentCutout augments image batches (batch, H, W, C); "
                f"got inputs of shape {tuple(inputs.shape)}."
            )
        mean = ops.convert_to_tensor(self.mean, "float32")
        std = ops.convert_to_tensor(self.std, "float32")
        pixels = ops.round(ops.clip(ops.cast(inputs, "float32") * std + mean, 0, 255))
        batch = (ops.shape(inputs)[0],)
        height, width = inputs.shape[1:3]
        lows = ops.convert_to_tensor([low for _, low, _ in OPERATIONS], "float32")
        highs = ops.convert_to_tensor([high for _, _, high in OPERATIONS], "float32")
        for _ in range(self.num_ops):
            index = keras.random.randint(
                batch, 0, len(OPERATIONS), seed=self.seed_generator
            )
            u = keras.random.uniform(batch, seed=self.seed_generator)
            low, high = ops.take(lows, index), ops.take(highs, index)
            pixels = apply_operation(pixels, index, low + (high - low) * u)
        size = keras.random.uniform(batch, seed=self.seed_generator) * self.cutout
        u_x = keras.random.uniform(batch, seed=self.seed_generator)
        u_y = keras.random.uniform(batch, seed=self.seed_generator)
        pixels = cutout(
            pixels,
            size * width,
            width + (1.0 - width) * u_x,
            height + (1.0 - height) * u_y,
        )
        return ops.cast((pixels - mean) / std, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_ops": self.num_ops,
            "cutout": self.cutout,
            "mean": self.mean,
            "std": self.std,
            "seed": self.seed,
        }


def _floats(value):
    return float(value) if np.ndim(value) == 0 else [float(v) for v in value]
