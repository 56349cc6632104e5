"""The rkd/pkt/sp/cc/nst presets (official CIFAR-100 settings and taps), and
relational terms combined with KD on digits."""

import sys
import types

import keras
import numpy as np
import pytest
from helpers import small_cnn
from helpers import sparse_ce

import keras_kd as kd

try:
    from keras_kd.presets import registry
except ImportError:  # The registry is wired in by the integrator.
    registry = types.ModuleType("keras_kd.presets.registry")
    registry._PRESETS = {}

    def _register(name, **meta):
        def decorator(builder):
            registry._PRESETS[name] = types.SimpleNamespace(builder=builder, **meta)
            return builder

        return decorator

    registry.register = _register
    registry.get = registry._PRESETS.__getitem__
    sys.modules["keras_kd.presets.registry"] = registry

import keras_kd.presets.relational  # noqa: E402,F401  (registers the presets)


def build(name, teacher, student, **overrides):
    preset = registry.get(name)
    values = {**preset.defaults, **overrides}
    return preset.builder([teacher], student, **values), preset


OFFICIAL = {
    # name: (defaults, class, teacher layers, student layers)
    "rkd": (
        {"rkd_weight": 1.0, "rkd_distance_weight": 25.0, "rkd_angle_weight": 50.0},
        kd.losses.RelationalKnowledgeDistillation,
        ["features"],
        ["features"],
    ),
    "pkt": (
        {"pkt_weight": 30000.0},
        kd.losses.ProbabilisticKnowledgeTransfer,
        ["features"],
        ["features"],
    ),
    "sp": (
        {"sp_weight": 3000.0},
        kd.losses.SimilarityPreserving,
        ["stage3"],
        ["stage3"],
    ),
    "cc": (
        {"cc_weight": 0.02, "cc_formulation": "repdistiller", "cc_embedding_dim": 128},
        kd.losses.CorrelationCongruence,
        ["features"],
        ["features"],
    ),
    "nst": (
        {"nst_weight": 50.0},
        kd.losses.NeuronSelectivityTransfer,
        ["stage1", "stage2", "stage3"],
        ["stage1", "stage2", "stage3"],
    ),
}


@pytest.fixture(scope="module")
def zoo_pair():
    return (
        kd.models.get("resnet32x4", num_classes=100),
        kd.models.get("resnet8x4", num_classes=100),
    )


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_official_defaults_and_taps(name, zoo_pair):
    teacher, student = zoo_pair
    defaults, cls, t_layers, s_layers = OFFICIAL[name]
    ((key, term, weight),) = build(name, teacher, student)[0]
    preset = registry.get(name)
    assert preset.defaults == defaults and preset.student_loss_weight == 1.0
    assert key == name and term.name == name and isinstance(term, cls)
    assert weight == list(defaults.values())[0]
    assert term.teacher_layer_names == t_layers
    assert term.student_layer_names == s_layers


def test_preset_overrides_reach_the_terms(zoo_pair):
    teacher, student = zoo_pair
    ((_, rkd, _),) = build("rkd", teacher, student, rkd_angle_weight=0.0)[0]
    assert rkd.angle_weight == 0.0 and rkd.distance_weight == 25.0
    ((_, cc, w),) = build(
        "cc",
        teacher,
        student,
        cc_formulation="gaussian",
        cc_embedding_dim=None,
        cc_weight=100.0,
    )[0]
    assert (cc.formulation, cc.embedding_dim, w) == ("gaussian", None, 100.0)


def test_nst_preset_pairs_stages_from_the_first():
    """vgg8 has four stages, resnet8x4 three: the official zip keeps three."""
    teacher = kd.models.get("vgg8", num_classes=10)
    student = kd.models.get("resnet8x4", num_classes=10)
    ((_, nst, _),) = build("nst", teacher, student)[0]
    assert nst.teacher_layer_names == ["stage1", "stage2", "stage3"]
    ((_, sp, _),) = build("sp", teacher, student)[0]
    assert sp.teacher_layer_names == ["stage4"] and sp.student_layer_names == ["stage3"]


def test_presets_need_zoo_stage_names():
    inputs = keras.Input((8, 8, 1))
    plain = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="stage"):
        build("sp", plain, plain)


@pytest.mark.slow  # Four relational terms compile slowly, most on JAX.
@pytest.mark.multi_backend
def test_relational_terms_with_kd_train_on_digits(digits):
    """KD + RKD + NST + CC from the presets in one Distiller, a few epochs."""
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    terms, weights = [kd.losses.LogitsDistillation(4.0, name="kd")], [1.0]
    for name in ("rkd", "nst", "cc"):
        ((_, term, weight),) = build(name, teacher, student)[0]
        terms.append(term)
        weights.append(weight)
    distiller = kd.Distiller(
        teacher,
        student,
        terms,
        distillation_loss_weights=weights,
        weighting="additive",
        student_loss_weight=1.0,
    )
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    # Whole batches only, so one compiled step.
    history = distiller.fit(
        x_train[:256], y_train[:256], epochs=1, batch_size=128, verbose=0
    )
    for metric in (
        "kd",
        "rkd",
        "rkd_distance",
        "rkd_angle",
        "nst",
        "cc",
        "student_loss",
        "total_loss",
    ):
        assert np.isfinite(history.history[metric]).all(), metric
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
