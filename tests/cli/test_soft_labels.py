"""`--reffakd_soft_labels`: ReffAKD's table trained once, then read back."""

import contextlib
import json
import os
import types
from unittest import mock

import numpy as np
import pytest
from helpers import recipe_flag_scope

from keras_kd import reffakd
from keras_kd.cli import distill
from keras_kd.cli import soft_labels

DIGITS = {"protocol": "digits", "image_size": None}
INFO = types.SimpleNamespace(info={"num_classes": 10})


@contextlib.contextmanager
def recipe_flags(*args):
    """The recipe's flags parsed from `args`, removed again afterwards."""
    with recipe_flag_scope() as flags:
        distill.define_flags()
        flags(["reffakd.py", "--reffakd_ae_epochs=1", *args])
        yield


def not_trained():
    """Fails the test if an autoencoder is trained."""
    error = AssertionError("an autoencoder was trained")
    return mock.patch.object(reffakd, "train_autoencoder", side_effect=error)


@pytest.fixture(scope="module")
def digits(digits_split):
    x, y, _, _ = digits_split
    return x[:300], y[:300]


def test_the_table_is_trained_once_then_read_back(tmp_path, digits):
    x, y = digits
    folder = str(tmp_path / "tables")
    with recipe_flags(f"--reffakd_soft_labels={folder}"):
        trained, cost = soft_labels.soft_label_table(INFO, x, y, DIGITS, seed=0)
        assert "reused_from" not in cost
        np.testing.assert_allclose(trained.sum(axis=1), 1.0, rtol=1e-5)
        # A sweep's next (T, α) point: the same data, seed and autoencoder
        # flags read the table back without training an autoencoder.
        with not_trained():
            read, reused = soft_labels.soft_label_table(INFO, x, y, DIGITS, seed=0)
    (name,) = os.listdir(folder)
    np.testing.assert_array_equal(read, trained)
    assert reused["reused_from"] == os.path.join(folder, name)
    assert reused["train_seconds"] == pytest.approx(cost["train_seconds"])
    assert reused["per_class"] == cost["per_class"]
    with np.load(os.path.join(folder, name)) as stored:
        assert json.loads(str(stored["settings"]))["seed"] == 0


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"y": "shuffled"},
        {"flag": "--reffakd_diagonal=0.5"},
        {"flag": "--reffakd_ae_epochs=2"},
    ],
)
def test_a_table_made_otherwise_is_not_read(tmp_path, digits, change):
    x, y = digits
    folder = str(tmp_path / "tables")
    with recipe_flags(f"--reffakd_soft_labels={folder}"):
        soft_labels.soft_label_table(INFO, x, y, DIGITS, seed=0)
    if "y" in change:
        y = np.random.default_rng(0).permutation(y)
    flags = [f"--reffakd_soft_labels={folder}", change.get("flag")]
    with recipe_flags(*[flag for flag in flags if flag]):
        with not_trained(), pytest.raises(AssertionError, match="was trained"):
            soft_labels.soft_label_table(INFO, x, y, DIGITS, change.get("seed", 0))
        _, cost = soft_labels.soft_label_table(
            INFO, x, y, DIGITS, change.get("seed", 0)
        )
    assert "reused_from" not in cost
    assert len(os.listdir(folder)) == 2
