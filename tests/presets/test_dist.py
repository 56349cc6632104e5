"""The DIST preset: the official CIFAR-100 configuration (dist_cifar.yaml:
CE 1, kd_loss_weight 2, `dist_t4` = DIST(beta=1, gamma=1, tau=4))."""

import pytest

import keras_kd as kd


class Named:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize(
    "pair",
    [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20")],
)
def test_dist_preset_uses_the_official_cifar_config(pair):
    kwargs = kd.presets.build("dist", Named(pair[0]), Named(pair[1]))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.StrongerTeacherDistillation)
    assert (term.beta, term.gamma, term.temperature) == (1.0, 1.0, 4.0)
    assert term.name == "dist"
    assert kwargs["distillation_loss_weights"] == [2.0]
    assert kwargs["student_loss_weight"] == 1.0
    assert kwargs["weighting"] == "additive"


def test_dist_preset_overrides_and_imagenet_temperature():
    kwargs = kd.presets.build(
        "dist", Named("t"), Named("s"), dist_temperature=1.0, dist_weight=1.0
    )
    (term,) = kwargs["distillation_losses"]
    assert term.temperature == 1.0
    assert kwargs["distillation_loss_weights"] == [1.0]
    preset = kd.presets.get("dist")
    assert preset.epoch_schedules == ()
    assert "dist_kd.py" in preset.reference and "dist_cifar.yaml" in preset.reference


def test_dist_combines_without_sharing_hyperparameters():
    kwargs = kd.presets.build("dist+dkd", Named("resnet32x4"), Named("resnet8x4"))
    dist, dkd = kwargs["distillation_losses"]
    assert isinstance(dkd, kd.losses.DecoupledDistillation)
    assert (dist.temperature, dkd.temperature, dkd.beta) == (4.0, 4.0, 8.0)
    assert kwargs["distillation_loss_weights"] == [2.0, 1.0]
    assert kwargs["student_loss_weight"] == 1.0
