"""Test helpers shared by the test modules: tiny models, NumPy softmaxes,
benchmark scripts as modules."""

import contextlib
import importlib.util
import os

import keras
import numpy as np
from absl import flags as absl_flags
from keras import layers


def small_cnn(width, num_classes=10, name=None, input_shape=(8, 8, 1)):
    """A conv net with named stages, for tests: stage1 8×8, stage2 4×4."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(h)
    h = keras.layers.ReLU(name="stage1")(h)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(h)
    h = keras.layers.ReLU(name="stage2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    outputs = keras.layers.Dense(num_classes, name="logits", dtype="float32")(h)
    return keras.Model(inputs, outputs, name=name)


@contextlib.contextmanager
def recipe_flag_scope():
    """Flags defined inside are removed afterwards and the others unparsed,
    so that the next recipe run in this process defines and parses its
    flags anew, as a fresh process would.

    Example: `with recipe_flag_scope(): distill.define_flags(); ...`."""
    defined = set(absl_flags.FLAGS)
    try:
        yield absl_flags.FLAGS
    finally:
        for flag in set(absl_flags.FLAGS) - defined:
            delattr(absl_flags.FLAGS, flag)
        absl_flags.FLAGS.unparse_flags()


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_softmax(z):
    return np.exp(numpy_log_softmax(z))


def tiny_resnet(width, blocks, name, preactivation=False):
    """Two stages (8×8, 4×4) of `blocks` residual blocks on 8×8×1 inputs.

    Post-activation blocks end in `ReLU(name=block{stage}_{i})`; with
    `preactivation` the `Add` (named so) is the block output.
    """
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(width, 3, padding="same")(inputs)
    for stage in (1, 2):
        for i in range(1, blocks + 1):
            strides, filters = (2 if stage == 2 and i == 1 else 1), width * stage
            y = layers.BatchNormalization()(x) if preactivation else x
            y = layers.Conv2D(filters, 3, strides, padding="same")(y)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = layers.Conv2D(filters, 3, padding="same")(y)
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides)(x)
            name_ = f"block{stage}_{i}"
            if preactivation:
                x = layers.Add(name=name_)([y, shortcut])
            else:
                x = layers.ReLU(name=name_)(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, dtype="float32")(x), name=name)


def np_adaptive_pool(maps, size):
    """PyTorch's AdaptiveAvgPool2d on (batch, H, W), with explicit bins."""
    _, h, w = maps.shape
    out = np.zeros((maps.shape[0],) + tuple(size))
    for i in range(size[0]):
        r0, r1 = (i * h) // size[0], -(-((i + 1) * h) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * w) // size[1], -(-((j + 1) * w) // size[1])
            out[:, i, j] = maps[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def np_attention(f, size=None, pool="features"):
    """AT's official order (RepDistiller AT.py) pools the feature map, then
    squares; AFD's (`Sample` in AFD.py) pools the energy map `mean_c(F²)`."""
    f = f.astype("float64")
    if size is not None and pool == "energy":
        flat = np_adaptive_pool((f**2).mean(-1), size).reshape(len(f), -1)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    if size is not None:
        channels = np.moveaxis(f, -1, 1).reshape((-1,) + f.shape[1:3])
        pooled = np_adaptive_pool(channels, size)
        f = np.moveaxis(pooled.reshape((len(f), f.shape[-1]) + tuple(size)), 1, -1)
    flat = (f**2).mean(-1).reshape(len(f), -1)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def gradient(fn, variable):
    """NumPy gradient of the scalar `fn(x)` at a `keras.Variable`'s value."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = fn(variable)
        return tape.gradient(loss, variable).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(fn)(variable.value))

    x = variable.value.detach().clone().requires_grad_(True)
    fn(x).backward()
    return x.grad.numpy()


def trainable_values(model_or_term):
    """Copies of the trainable variables' values (a model, layer or term)."""
    return [
        np.array(keras.ops.convert_to_numpy(v))
        for v in model_or_term.trainable_variables
    ]


def all_values(model):
    """Copies of every weight of `model`, BatchNorm statistics included."""
    return [np.array(w) for w in model.get_weights()]


def fit_steps(distiller, x, y, steps=2, batch_size=32):
    """`steps` optimizer steps on the first images, in order; the history.

    Term tests assert what a few steps guarantee (finite logs, which
    variables the gradients reach, a frozen teacher), not a loss trajectory,
    which depends on the machine's floating-point path.
    """
    n = steps * batch_size
    history = distiller.fit(
        x[:n], y[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0
    ).history
    for name, values in history.items():
        assert np.all(np.isfinite(values)), (name, values)
    return history


def assert_all_moved(before, after, what="variable"):
    """Adam moves exactly the variables whose gradient is non-zero."""
    assert len(before) == len(after) > 0
    for i, (b, a) in enumerate(zip(before, after)):
        assert np.abs(a - b).max() > 0, f"{what} {i} got no gradient"


def assert_unchanged(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


def half_pixel_bilinear(images, size):
    """NumPy bilinear resize with half-pixel centres (PIL's and TF's)."""
    n, h, w, c = images.shape
    out_h, out_w = size

    def taps(out, inp):
        src = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, inp - 1)
        return low, high, src - low

    r0, r1, fr = taps(out_h, h)
    c0, c1, fc = taps(out_w, w)
    rows = images[:, r0] * (1 - fr)[None, :, None, None]
    rows = rows + images[:, r1] * fr[None, :, None, None]
    cols = rows[:, :, c0] * (1 - fc)[None, None, :, None]
    return cols + rows[:, :, c1] * fc[None, None, :, None]


def load_benchmark(name):
    """Imports `benchmarks/<name>.py` (not a package) as a module."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        f"benchmarks_{name}", os.path.join(root, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DictStudent(keras.Model):
    """A subclassed model that names its outputs, as keras_kd requires."""

    def __init__(self, return_dict=True, **kwargs):
        super().__init__(**kwargs)
        self.return_dict = return_dict
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        features = self.conv(x)
        logits = self.dense(self.pool(features))
        return {"logits": logits, "conv": features} if self.return_dict else logits
