"""The recipes' protocols resolved in process (no data, no training):
`--protocol=fashion` and the teachers' epochs and schedule."""

import pytest
from absl import flags as absl_flags

from keras_kd.cli import distill
from keras_kd.cli import methods
from keras_kd.cli.protocols import learning_rate
from keras_kd.cli.protocols import resolve_protocol
from keras_kd.presets import get


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
