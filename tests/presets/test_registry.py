"""kd.presets: the registry's contract (build, names, get, errors, '+')."""

import numpy as np
import pytest

import keras_kd as kd
from keras_kd.presets import registry

pytestmark = pytest.mark.multi_backend

EXPECTED = {
    "afd",
    "at",
    "dlkd",
    "fa",
    "fa_multi",
    "fitnets",
    "kd",
    "reffakd",
    "rtk",
    "skd",
}


@pytest.fixture(scope="module")
def pair():
    teacher = kd.models.get("digits_cnn_large", num_classes=10, input_shape=(8, 8, 1))
    student = kd.models.get("digits_cnn_small", num_classes=10, input_shape=(8, 8, 1))
    return teacher, student


def test_names_lists_every_family():
    assert EXPECTED <= set(kd.presets.names())
    assert kd.presets.names() == sorted(kd.presets.names())
    for name in kd.presets.names():
        preset = kd.presets.get(name)
        assert preset.help and preset.reference


def test_build_returns_distiller_kwargs_with_paper_defaults(pair):
    teacher, student = pair
    kwargs = kd.presets.build("fitnets", teacher, student)
    assert set(kwargs) == {
        "distillation_losses",
        "distillation_loss_weights",
        "student_loss_weight",
        "weighting",
    }
    assert kwargs["weighting"] == "additive"
    assert kwargs["distillation_loss_weights"] == [100.0]
    assert kwargs["student_loss_weight"] == 1.0
    term = kwargs["distillation_losses"][0]
    assert isinstance(term, kd.losses.FeatureAlignment)
    assert term.teacher_layer_name == "stage2"
    kd_kwargs = kd.presets.build("kd", teacher, student)
    assert kd_kwargs["student_loss_weight"] == 0.1
    assert kd_kwargs["distillation_loss_weights"] == [0.9]
    assert kd_kwargs["distillation_losses"][0].temperature == 4.0
    # A Distiller takes them as they are, and trains.
    distiller = kd.Distiller(teacher, student, **kwargs)
    assert distiller.student_loss_weight == 1.0


def test_overrides_and_callable_ce_weight(pair):
    teacher, student = pair
    kwargs = kd.presets.build(
        "kd",
        teacher,
        student,
        kd_temperature=2.0,
        kd_weight=0.5,
        student_loss_weight=0.5,
    )
    assert kwargs["distillation_losses"][0].temperature == 2.0
    assert kwargs["distillation_loss_weights"] == [0.5]
    assert kwargs["student_loss_weight"] == 0.5
    reffakd = kd.presets.build(
        "reffakd", kd.SoftLabelTeacher(np.eye(10)), student, reffakd_alpha=0.7
    )
    assert reffakd["student_loss_weight"] == pytest.approx(0.3)
    assert reffakd["distillation_loss_weights"] == [0.7]


def test_combination_dedupes_by_key_and_ce_weight_is_one(pair):
    teacher, student = pair
    kwargs = kd.presets.build("kd+fa", teacher, student, kd_weight=0.5)
    names = [t.name for t in kwargs["distillation_losses"]]
    assert names == ["kd", "fa"]
    assert kwargs["distillation_loss_weights"] == [0.5, 100.0]
    assert kwargs["student_loss_weight"] == 1.0
    afd_rtk = kd.presets.build("afd+rtk", teacher, student)
    assert [t.name for t in afd_rtk["distillation_losses"]] == ["kd", "afd", "rtk"]


def test_errors_list_valid_choices(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="Unknown preset 'nope'.*fitnets"):
        kd.presets.build("kd+nope", teacher, student)
    with pytest.raises(
        ValueError, match="Unknown hyper-parameter.*'beta'.*kd_temperature"
    ):
        kd.presets.build("kd", teacher, student, beta=1.0)
    with pytest.raises(ValueError, match="repeats"):
        kd.presets.build("kd+kd", teacher, student)
    with pytest.raises(ValueError, match="soft labels"):
        kd.presets.build("kd+reffakd", teacher, student)
    with pytest.raises(ValueError, match="at least 2 teachers"):
        kd.presets.build("fa_multi", teacher, student)
    with pytest.raises(ValueError, match="student_loss_weight"):
        kd.presets.build("kd", teacher, student, student_loss_weight=-1.0)


def test_pair_defaults_apply_to_matching_zoo_names(pair):
    teacher, student = pair
    name = "_test_pair"
    try:

        @registry.register(
            name,
            help="test",
            reference="test",
            defaults={"w": 1.0},
            pair_defaults={("digits_cnn_large", "digits_cnn_small"): {"w": 7.0}},
            student_loss_weight=1.0,
        )
        def _builder(teachers, student, w):
            return [("x", kd.losses.LogitsDistillation(name="x"), w)]

        assert kd.presets.build(name, teacher, student)[
            "distillation_loss_weights"
        ] == [7.0]
        assert kd.presets.build(name, teacher, student, w=2.0)[
            "distillation_loss_weights"
        ] == [2.0]
        assert kd.presets.build(name, student, student)[
            "distillation_loss_weights"
        ] == [1.0]
        with pytest.raises(ValueError, match="registered already"):
            registry.register(
                name, help="", reference="", defaults={"w": 1}, student_loss_weight=1.0
            )(_builder)
        with pytest.raises(ValueError, match="differ from `defaults`"):
            registry.register(
                "_other",
                help="",
                reference="",
                defaults={"v": 1},
                student_loss_weight=1.0,
            )(_builder)
    finally:
        registry._PRESETS.pop(name, None)
