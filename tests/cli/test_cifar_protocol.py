"""The CIFAR protocol as the official codes run it (issue 11, items 4, 5):
a recipe run on a tiny RGB npz folder."""

import json
import os

import numpy as np
import pytest

from tests.cli.test_recipes import recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        x = rng.integers(0, 256, size=(n, 16, 16, 3)).astype("uint8")
        np.savez(path / f"{split}.npz", x=x, y=np.arange(n) % 10)
    return path


def test_teacher_lr_is_its_own_and_dlkd_crops_its_views(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    recipe(
        "distill",
        f"--dataset=npz:{tiny_cifar}",
        "--protocol=cifar",
        "--method=dlkd",
        "--teacher=digits_cnn_small",
        "--student=mobilenetv2",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=10",
        f"--output_dir={out}",
        "--export=",
        "--nobaseline",
        timeout=900,
    )
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    resolved = results["resolved"]
    # RepDistiller train_student.py: 0.01 for a MobileNetV2 student; the
    # teacher (not a MobileNetV2) trains as train_teacher.py does, at 0.05.
    assert resolved["lr"] == pytest.approx(0.01)
    assert results["models"]["teacher_0"]["lr"] == pytest.approx(0.05)
    # DLKD: no host crop/flip before rotating; the term crops each view
    # with 4 pixels of black padding (-mean/std of the training images).
    assert resolved["distilled_host_augment"] is False
    views = resolved["dlkd_views"]
    assert views["dlkd_crop_padding"] == 4
    x = np.load(tiny_cifar / "train.npz")["x"].astype("float64")
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    np.testing.assert_allclose(views["dlkd_pad_value"], -mean / std, rtol=1e-3)
