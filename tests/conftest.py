"""Shared fixtures (digits, a trained teacher); helpers live in helpers.py."""

import hashlib
import os

import keras
import pytest
from helpers import load_benchmark
from helpers import recipe_flag_scope
from helpers import small_cnn
from helpers import sparse_ce
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits: 8×8×1 in [0, 1], a fixed stratified split."""
    data = load_digits()
    x = (data.images[..., None] / 16.0).astype("float32")
    return train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )


@pytest.fixture(scope="session")
def trained_teacher(digits, request):
    """`small_cnn(32)` trained 15 epochs on digits (about 98 % accuracy).

    Its weights are kept in pytest's cache, keyed by this file and
    helpers.py, so the JAX pass of tests/run.sh reuses the TensorFlow one's.
    """
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher = small_cnn(32, name="teacher")
    teacher.compile(keras.optimizers.Adam(3e-3), sparse_ce(), metrics=["accuracy"])
    path = _cached_weights_path(request.config, "trained_teacher")
    if path and os.path.exists(path):
        teacher.load_weights(path)
        return teacher
    teacher.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    if path:  # Written whole, then renamed: pytest-xdist workers share it.
        partial = f"{path}.{os.getpid()}.weights.h5"
        teacher.save_weights(partial)
        os.replace(partial, path)
    return teacher


def _cached_weights_path(config, name):
    """A weights file in pytest's cache, or None without the cache plugin."""
    if getattr(config, "cache", None) is None:
        return None
    source = b"".join(
        open(os.path.join(os.path.dirname(__file__), f), "rb").read()
        for f in ("conftest.py", "helpers.py")
    )
    key = hashlib.sha256(source + keras.__version__.encode()).hexdigest()[:16]
    return str(config.cache.mkdir("keras_kd") / f"{name}_{key}.weights.h5")


@pytest.fixture(scope="module")
def accuracy():
    """benchmarks/accuracy.py as a module."""
    return load_benchmark("accuracy")


@pytest.fixture(scope="module")
def accuracy_report():
    """benchmarks/accuracy_report.py as a module."""
    return load_benchmark("accuracy_report")


@pytest.fixture(scope="module")
def accuracy_runs():
    """benchmarks/accuracy_runs.py as a module."""
    return load_benchmark("accuracy_runs")


@pytest.fixture(scope="module")
def accuracy_data():
    """benchmarks/accuracy_data.py as a module."""
    return load_benchmark("accuracy_data")


@pytest.fixture
def suites(tmp_path):
    """accuracy.py's flags, defined and parsed for `args` (`suites(*args)`
    returns the accuracy module); removed afterwards."""
    with recipe_flag_scope() as flags:
        accuracy = load_benchmark("accuracy")
        accuracy.define_flags()

        def parse(*args):
            flags.unparse_flags()
            flags(["accuracy.py", f"--work_dir={tmp_path}", *args])
            return accuracy

        yield parse
