import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


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
    import torch

    x = variable.value.detach().clone().requires_grad_(True)
    fn(x).backward()
    return x.grad.numpy()


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: 8×8×1 in [0, 1], a fixed stratified split."""
    data = load_digits()
    x = (data.images[..., None] / 16.0).astype("float32")
    return train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )


@pytest.fixture(scope="session")
def trained_teacher(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher = small_cnn(32, name="teacher")
    teacher.compile(keras.optimizers.Adam(3e-3), sparse_ce(), metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    return teacher


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_softmax(z):
    return np.exp(numpy_log_softmax(z))
