"""The recipes' protocols resolved in process (no training):
`--protocol=fashion`, `--protocol=reffakd_fashion` and the teachers' epochs
and schedule."""

import numpy as np
import pytest
from absl import flags as absl_flags
from helpers import half_pixel_bilinear
from keras import ops

from keras_kd import training
from keras_kd.cli import distill
from keras_kd.cli import methods
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import load_data
from keras_kd.cli.protocols import check_view_augmentation
from keras_kd.cli.protocols import learning_rate
from keras_kd.cli.protocols import resolve_protocol
from keras_kd.cli.teacher_cache import cache_augmentation
from keras_kd.presets import get
from keras_kd.training import Data


@pytest.fixture
def resolve():
    """`resolve(*args)`: distill's flags parsed from `args`, then
    `(cfg, defaults)` of `resolve_protocol`; the flags are removed after."""
    defined = set(absl_flags.FLAGS)
    distill.define_flags()

    def parse(*args):
        absl_flags.FLAGS.unparse_flags()
        absl_flags.FLAGS(["distill.py", "--dataset=npz:/nowhere", *args])
        return resolve_protocol()

    yield parse
    for flag in set(absl_flags.FLAGS) - defined:
        delattr(absl_flags.FLAGS, flag)
    absl_flags.FLAGS.unparse_flags()


def test_fashion_protocol_resolves_to_its_settings(resolve):
    cfg, defaults = resolve("--protocol=fashion")
    assert cfg == dict(
        cfg,
        protocol="fashion",
        optimizer="sgd",
        momentum=0.9,
        epochs=30,
        teacher_epochs=30,
        batch_size=128,
        weight_decay=5e-4,
        augment=True,
        normalize="channel",
        train_limit=0,
        lr_decay_epochs=[15, 22],  # round(22.5): to even.
        teacher_lr_decay_epochs=[15, 22],
    )
    assert learning_rate(cfg, "fashion_cnn_small", defaults) == 0.05
    assert defaults["teacher"] == ["fashion_cnn_large"]
    assert defaults["student"] == "fashion_cnn_small"
    assert methods.ce_weight(["kd"], defaults) == 0.1
    kd = methods.preset_hyperparameters(["kd"], defaults)
    assert (kd["kd_temperature"], kd["kd_weight"]) == (4.0, 0.9)
    # No protocol term weights: the presets' own.
    for name in ("fitnets", "at"):
        used = methods.preset_hyperparameters([name], defaults)
        assert f"{name}_weight" not in used
        assert get(name).defaults[f"{name}_weight"] > 0


def test_teacher_epochs_and_their_schedule(resolve):
    cfg, _ = resolve("--protocol=fashion", "--epochs=8", "--teacher_epochs=4")
    assert cfg["lr_decay_epochs"] == [4, 6]
    assert cfg["teacher_lr_decay_epochs"] == [2, 3]
    cfg, _ = resolve("--protocol=fashion", "--lr_decay_epochs=3")
    assert cfg["lr_decay_epochs"] == cfg["teacher_lr_decay_epochs"] == [3]
    # cifar: the teachers train for --epochs; digits: 30 whatever --epochs.
    cfg, _ = resolve("--protocol=cifar", "--epochs=24")
    assert cfg["teacher_epochs"] == 24
    assert cfg["lr_decay_epochs"] == cfg["teacher_lr_decay_epochs"] == [15, 18, 21]
    cfg, _ = resolve("--protocol=digits", "--epochs=5")
    assert (cfg["teacher_epochs"], cfg["teacher_lr_decay_epochs"]) == (30, [])


def test_reffakd_fashion_protocol_is_the_official_notebooks(resolve):
    """fashion_mnist/tinySLG_distillation.ipynb (docs/methods.md §5)."""
    cfg, defaults = resolve("--protocol=reffakd_fashion")
    assert cfg == dict(
        cfg,
        protocol="reffakd_fashion",
        optimizer="sgd",
        momentum=0.9,
        epochs=200,
        teacher_epochs=200,
        batch_size=128,
        weight_decay=5e-4,
        augment="flip_rotation",
        image_size=(32, 32),
        normalize="channel",
        train_limit=0,
        lr_decay_epochs=[60, 120, 160],
        lr_decay_factor=0.2,
    )
    assert learning_rate(cfg, "lenet5_bn", defaults) == 0.1
    assert defaults["student"] == "lenet5_bn"
    assert defaults["teacher"] == ["fashion_cnn_large"]
    # --augment keeps the protocol's kind; --noaugment turns it off.
    assert resolve("--protocol=reffakd_fashion", "--augment")[0]["augment"] == (
        "flip_rotation"
    )
    assert not resolve("--protocol=reffakd_fashion", "--noaugment")[0]["augment"]
    assert resolve("--protocol=fashion")[0]["lr_decay_factor"] == 0.1


def test_reffakd_fashion_learning_rate_per_epoch(resolve):
    """MultiStepLR([60, 120, 160], gamma=0.2) from lr 0.1, stepped once per
    epoch, as the notebook's training loop: epochs 1-60 at 0.1, 61-120 at
    0.02, 121-160 at 0.004, 161-200 at 0.0008 (0-based here)."""
    cfg, defaults = resolve("--protocol=reffakd_fashion")
    lr = learning_rate(cfg, "lenet5_bn", defaults)
    config = training.TrainConfig.from_dict(cfg, lr)
    steps = 469  # ceil(60000 / 128): the last batch partial, as the DataLoader.
    optimizer = training.make_optimizer(config, steps)
    expected = [0.1] * 60 + [0.02] * 60 + [0.004] * 40 + [0.0008] * 40
    # The first, a middle and the last batch of every epoch.
    for offset in (0, steps // 2, steps - 1):
        got = []
        for epoch in range(200):
            optimizer.iterations.assign(epoch * steps + offset)
            got.append(float(ops.convert_to_numpy(optimizer.learning_rate)))
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_reffakd_fashion_resizes_train_and_test_after_measuring(resolve, tmp_path):
    """Both splits resized to 32x32 when loaded; the normalisation is the
    28x28 images' (the notebooks' mean and std), and the zoo models are
    built at 32x32."""
    rng = np.random.default_rng(0)
    splits = {"train": 24, "test": 8}
    originals = {}
    for split, n in splits.items():
        originals[split] = rng.integers(0, 256, (n, 28, 28, 1), dtype="uint8")
        np.savez(tmp_path / f"{split}.npz", x=originals[split], y=np.arange(n) % 4)
    dataset = f"--dataset=npz:{tmp_path}"
    cfg, _ = resolve("--protocol=reffakd_fashion", dataset)
    data = load_data(cfg)
    assert data.info["input_shape"] == (32, 32, 1)
    for x, original in ((data.x, originals["train"]), (data.x_test, originals["test"])):
        assert x.shape == (len(original), 32, 32, 1)
        want = half_pixel_bilinear(original.astype("float64"), (32, 32))
        assert np.abs(x - np.round(want)).max() <= 1
    train = originals["train"].astype("float64")
    np.testing.assert_allclose(data.mean, [train.mean()], rtol=1e-5)
    np.testing.assert_allclose(data.std, [train.std()], rtol=1e-5)
    assert abs(data.std[0] - data.x.std()) > 1  # Not the resized images'.
    cfg, _ = resolve("--protocol=fashion", dataset)
    assert load_data(cfg).x.shape[1:] == (28, 28, 1)


def test_reffakd_fashion_augments_on_the_device(resolve):
    """Flip + ±15° rotation layers filling with the normalised black; crop
    + flip protocols keep augmenting on the host."""
    cfg, _ = resolve("--protocol=reffakd_fashion")
    x, y = np.zeros((1, 32, 32, 1), "uint8"), np.zeros(1, "int64")
    mean, std = np.array([72.9], "float32"), np.array([90.0], "float32")
    data = Data.from_arrays(x, y, x, y, mean=mean, std=std)
    layer = augmentation_layer(cfg, 0, data)
    flip, rotation = layer.layers
    assert flip.mode == "horizontal"
    assert rotation.factor == (-15 / 360, 15 / 360)
    assert rotation.fill_value == pytest.approx(-72.9 / 90.0)
    assert rotation.interpolation == "nearest"
    assert augmentation_layer(resolve("--protocol=fashion")[0], 0, data) is None
    with pytest.raises(RecipeError, match="dlkd crop and flip their own views"):
        check_view_augmentation(cfg, ["kd", "dlkd"])
    check_view_augmentation(cfg, ["kd"])
    check_view_augmentation(resolve("--protocol=fashion")[0], ["dlkd"])
    with pytest.raises(RecipeError, match="teacher_cache records crop"):
        cache_augmentation(cfg, data)
