"""Fixtures of the recipe tests (tests/cli)."""

import pytest

from keras_kd import data as kd_data


@pytest.fixture(scope="module")
def digits_split():
    (x, y), (x_test, y_test), _ = kd_data.load("digits")
    return x, y, x_test, y_test
