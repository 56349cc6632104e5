"""Shared fixtures (digits, a trained teacher); helpers live in helpers.py."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from helpers import small_cnn
from helpers import sparse_ce


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
