"""The mlkd and mlkd+ls presets: the official defaults and per-pair values."""

import pytest

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


class Named:
    def __init__(self, name):
        self.name = name


def test_mlkd_preset_uses_the_official_defaults():
    kwargs = kd.presets.build("mlkd", Named("resnet32x4"), Named("resnet8x4"))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.MultiLevelLogitDistillation)
    # KD_ours.py: the config's T (cfg.py: 4), then 3, 5, 2, 6; the unmasked
    # sum reads the strong view at 4, 3, 5 and the weak one at 2, 6.
    assert term.temperatures == [4.0, 3.0, 5.0, 2.0, 6.0]
    assert term.strong_kd_views == ["strong", "strong", "strong", "weak", "weak"]
    assert (term.kd_weight, term.ce_weight, term.percentile) == (0.9, 0.1, 50.0)
    assert not term.standardize and term.strong_augment
    assert term.crop_padding == 0  # No crop unless asked (the CLI asks).
    assert kwargs["student_loss_weight"] == 0.1
    assert kwargs["distillation_loss_weights"] == [1.0]
    assert kwargs["weighting"] == "additive"


def test_mlkd_preset_overrides():
    kwargs = kd.presets.build(
        "mlkd",
        Named("t"),
        Named("s"),
        mlkd_temperature=1.0,
        mlkd_weight=0.5,
        mlkd_ce_weight=0.5,
        mlkd_crop_padding=4,
        mlkd_mean=[125.0, 123.0, 114.0],
        mlkd_std=[63.0, 62.0, 66.0],
    )
    (term,) = kwargs["distillation_losses"]
    # The ImageNet configs (kd_ours.yaml): T 1, CE 0.5, KD 0.5.
    assert term.temperatures == [1.0, 3.0, 5.0, 2.0, 6.0]
    assert (term.kd_weight, term.ce_weight) == (0.5, 0.5)
    assert kwargs["student_loss_weight"] == 0.5
    assert term.crop_padding == 4
    assert term.mean == [125.0, 123.0, 114.0] and term.std == [63.0, 62.0, 66.0]


@pytest.mark.parametrize(
    "pair,weight",
    [
        (("resnet32x4", "resnet8x4"), 9.0),
        (("wrn_40_2", "wrn_16_2"), 9.0),
        (("vgg13", "vgg8"), 6.0),
        (("vgg13", "mobilenetv2"), 6.0),
    ],
)
def test_mlkd_ls_preset_uses_the_logged_settings(pair, weight):
    kwargs = kd.presets.build("mlkd+ls", Named(pair[0]), Named(pair[1]))
    (term,) = kwargs["distillation_losses"]
    assert term.standardize
    assert term.temperatures == [2.0, 3.0, 5.0, 2.0, 6.0]
    assert term.kd_weight == weight
    assert term.ce_weight == kwargs["student_loss_weight"] == 0.1


def test_mlkd_presets_are_registered():
    assert {"mlkd", "mlkd+ls"} <= set(kd.presets.names())
    assert [p.name for p in kd.presets.parse("mlkd+ls")] == ["mlkd+ls"]
