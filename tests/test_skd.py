"""SKD and its baselines: the subset KD term against NumPy, the helpers on
digits with a 10-class teacher and a 3-class student."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import assert_unchanged
from helpers import fit_steps
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend

SUBSET = [3, 5, 8]


def np_subset_kd(z_t_list, weights, indices, z_s, t):
    """T² · KL(Σ_m w_m renorm(softmax(z_t^m/T)[S]) ‖ softmax(z_s/T))."""
    target = 0
    for w, z_t in zip(weights, z_t_list):
        p = numpy_softmax(z_t / t)[:, indices]
        target = target + w * p / p.sum(-1, keepdims=True)
    return t * t * np.sum(target * (np.log(target) - numpy_log_softmax(z_s / t)), -1)


def run(term, teacher_logits, student_logits, weights):
    value = term(
        [{"logits": ops.convert_to_tensor(z)} for z in teacher_logits],
        {"logits": ops.convert_to_tensor(student_logits)},
        teacher_weights=weights,
    )
    return ops.convert_to_numpy(value)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_subset_logits_distillation_matches_renormalised_kd(temperature):
    rng = np.random.default_rng(0)
    z_t = rng.normal(size=(16, 10)).astype("float32") * 3
    z_s = rng.normal(size=(16, 3)).astype("float32") * 3
    term = kd.losses.SubsetLogitsDistillation([8, 3, 5], temperature)
    got = run(term, [z_t], z_s, [1.0])
    expected = np_subset_kd([z_t], [1.0], [8, 3, 5], z_s, temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_subset_logits_distillation_two_teachers():
    rng = np.random.default_rng(1)
    z_t1, z_t2 = rng.normal(size=(2, 8, 6)).astype("float32") * 2
    z_s = rng.normal(size=(8, 2)).astype("float32")
    term = kd.losses.SubsetLogitsDistillation(np.array([4, 0]), 2.0)
    got = run(term, [z_t1, z_t2], z_s, [0.25, 0.75])
    expected = np_subset_kd([z_t1, z_t2], [0.25, 0.75], [4, 0], z_s, 2.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def task(digits):
    """Digits 3, 5, 8 relabelled 0..2, 15 training images per class."""
    x_train, x_test, y_train, y_test = digits
    (x, y), mapping = kd.data.class_subset(
        (x_train, y_train), SUBSET, max_per_class=15, seed=0
    )
    (x_val, y_val), _ = kd.data.class_subset((x_test, y_test), SUBSET)
    return x, y, x_val, y_val, mapping


def test_class_subset_remaps_and_keeps_the_mapping(task, digits):
    x, y, x_val, y_val, mapping = task
    assert np.bincount(y).tolist() == [15, 15, 15]
    assert mapping.original_ids.tolist() == SUBSET
    _, x_test, _, y_test = digits
    np.testing.assert_array_equal(
        mapping.to_original(y_val), y_test[np.isin(y_test, SUBSET)]
    )
    with pytest.raises(ValueError, match="Unknown class 10"):
        kd.data.class_subset((x, y), [0, 10])
    with pytest.raises(ValueError, match="no examples"):
        kd.data.class_subset((x, np.where(y == 1, 2, y)), [0, 1])


def compile_(model):
    model.compile(keras.optimizers.Adam(3e-3), sparse_ce(), metrics=["accuracy"])
    return model


def test_skd_trains_adapters_and_student_not_teacher(task, trained_teacher):
    x, y, _, _, _ = task
    keras.utils.set_random_seed(0)
    student = small_cnn(8, num_classes=3, name="student")
    distiller = compile_(
        kd.skd.skd_distiller(trained_teacher, student, ["stage1", "stage2"], beta=10.0)
    )
    assert [type(t).__name__ for t in distiller.distillation_losses] == [
        "FeatureAlignment",
        "FeatureAlignment",
    ]
    teacher_before = all_values(trained_teacher)
    adapters_before = [
        trainable_values(t.aligners[0]) for t in distiller.distillation_losses
    ]
    history = fit_steps(compile_(distiller), x, y, batch_size=16)
    assert_unchanged(teacher_before, all_values(trained_teacher))
    for term, before in zip(distiller.distillation_losses, adapters_before):
        assert_all_moved(before, trainable_values(term.aligners[0]), term.name)
    # The Distiller's total is CE + β · Σ stages (additive weighting).
    logs = {k: v[-1] for k, v in history.items()}
    np.testing.assert_allclose(
        logs["total_loss"],
        logs["student_loss"] + 10.0 * (logs["skd_stage1"] + logs["skd_stage2"]),
        rtol=1e-4,
    )


def test_renormalised_logits_baseline_trains_the_student_only(task, trained_teacher):
    x, y, _, _, mapping = task
    keras.utils.set_random_seed(0)
    student = small_cnn(8, num_classes=3, name="student")
    distiller = compile_(
        kd.skd.renormalised_logits_distiller(
            trained_teacher, student, mapping.original_ids, student_loss_weight=0.0
        )
    )
    teacher_before = all_values(trained_teacher)
    student_before = trainable_values(student)
    history = fit_steps(distiller, x, y, batch_size=16)
    assert history["subset_logits_distillation"][0] > 0
    # A zero CE weight: only the subset KD term moves the student.
    assert_all_moved(student_before, trainable_values(student))
    assert_unchanged(teacher_before, all_values(trained_teacher))


def test_finetune_model_copies_backbone_with_new_head(task, trained_teacher):
    x, y, x_val, y_val, _ = task
    model = kd.skd.finetune_model(trained_teacher, 3)
    assert model.output.shape[-1] == 3 and model.layers[-1].name == "logits"
    backbone = keras.Model(model.inputs, model.layers[-1].input)
    teacher_features = keras.Model(
        trained_teacher.inputs, trained_teacher.get_layer("features").output
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(backbone(x_val[:8])),
        ops.convert_to_numpy(teacher_features(x_val[:8])),
        rtol=1e-5,
        atol=1e-6,
    )
    teacher_before = all_values(trained_teacher)
    model_before = trainable_values(model)
    keras.utils.set_random_seed(0)
    history = fit_steps(compile_(model), x, y, batch_size=16)
    assert history["loss"][0] > 0
    # The copy trains, backbone and head, and the teacher stays as it was.
    assert_all_moved(model_before, trainable_values(model))
    assert_unchanged(teacher_before, all_values(trained_teacher))
    named = kd.skd.finetune_model(trained_teacher, 2, feature_layer="stage2")
    assert named.output.shape[-1] == 2


# --- Errors ------------------------------------------------------------------


def teacher_and_student():
    return small_cnn(8, name="teacher"), small_cnn(4, num_classes=3, name="student")


@pytest.mark.parametrize(
    "indices, match",
    [
        ([3, 5], "2 class_indices but the student has 3"),
        ([3, 5, 10], r"class_indices \[10\] are out of range.*10 classes"),
    ],
)
def test_subset_indices_checked_against_both_models(indices, match):
    teacher, student = teacher_and_student()
    with pytest.raises(ValueError, match=match):
        kd.Distiller(teacher, student, kd.losses.SubsetLogitsDistillation(indices))


def test_plain_logit_kd_still_rejects_a_teacher_with_other_classes():
    teacher, student = teacher_and_student()
    with pytest.raises(ValueError, match="teacher 'teacher' has 10 classes"):
        kd.Distiller(teacher, student, kd.losses.LogitsDistillation())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {
                "teacher_layer_names": ["stage1", "stage2"],
                "student_layer_names": ["stage2"],
            },
            "one student layer per teacher",
        ),
        ({"teacher_layer_names": []}, "non-empty list"),
        ({"teacher_layer_names": ["stage1"], "beta": 0}, "beta must be positive"),
        ({"teacher_layer_names": ["nope"]}, "no layer named 'nope'"),
    ],
)
def test_skd_distiller_bad_input(kwargs, match):
    teacher, student = teacher_and_student()
    with pytest.raises(ValueError, match=match):
        kd.skd.skd_distiller(teacher, student, **kwargs)


def test_subset_term_bad_arguments():
    with pytest.raises(ValueError, match="distinct non-negative"):
        kd.losses.SubsetLogitsDistillation([1, 1])
    with pytest.raises(ValueError, match="integer teacher class ids"):
        kd.losses.SubsetLogitsDistillation([1.5])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        kd.skd.finetune_model(small_cnn(4), 3, feature_layer="nope")


def test_subset_term_config_round_trip():
    term = kd.losses.SubsetLogitsDistillation([2, 7], temperature=3.0)
    restored = type(term).from_config(term.get_config())
    assert restored.get_config() == term.get_config()
    assert restored.class_indices == [2, 7]
