"""Logit standardization (Sun et al., CVPR 2024) against NumPy references of
the official code: z-score with torch.std's unbiased std and 1e-7 added."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import assert_unchanged
from helpers import fit_steps
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import ops

import keras_kd as kd
from keras_kd.losses.base import standardize_logits

pytestmark = pytest.mark.multi_backend


def np_standardize(z):
    z = z.astype("float64")
    mean = z.mean(-1, keepdims=True)
    std = z.std(-1, ddof=1, keepdims=True)  # torch.std: unbiased
    return (z - mean) / (1e-7 + std)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(z_t, z_s, t):
    """Per-sample T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))."""
    log_t, log_s = np_log_softmax(z_t / t), np_log_softmax(z_s / t)
    return t * t * np.sum(np.exp(log_t) * (log_t - log_s), -1)


def logits(seed, n=16, c=10):
    rng = np.random.default_rng(seed)
    z_t = (rng.normal(size=(n, c)) * 6 + 2).astype("float32")
    z_s = (rng.normal(size=(n, c)) * 0.5 - 1).astype("float32")
    return z_t, z_s


def call(term, z_t, z_s, **kwargs):
    value = term(
        [{"logits": ops.convert_to_tensor(z_t)}],
        {"logits": ops.convert_to_tensor(z_s)},
        teacher_weights=[1.0],
        **kwargs,
    )
    return keras.tree.map_structure(ops.convert_to_numpy, value)


def test_standardize_uses_unbiased_std_and_official_epsilon():
    z, _ = logits(0)
    z[0] = 3.0  # a constant row: std 0, so the result is 0 (not NaN)
    got = ops.convert_to_numpy(standardize_logits(z))
    np.testing.assert_allclose(got, np_standardize(z), rtol=1e-5, atol=1e-5)
    assert np.all(got[0] == 0)
    # The unbiased std (÷ C−1), not NumPy's default biased one (÷ C).
    biased = (z[1:] - z[1:].mean(-1, keepdims=True)) / z[1:].std(-1, keepdims=True)
    assert np.abs(got[1:] - biased).max() > 1e-2


@pytest.mark.parametrize("t", [2.0, 4.0])
def test_kd_with_standardization_matches_official(t):
    z_t, z_s = logits(1)
    got = call(kd.losses.LogitsDistillation(t, standardize=True), z_t, z_s)
    want = np_kd(np_standardize(z_t), np_standardize(z_s), t)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    plain = call(kd.losses.LogitsDistillation(t), z_t, z_s)
    assert np.abs(plain - want).max() > 1e-2


def test_standardized_kd_ignores_shift_and_scale_of_student_logits():
    z_t, z_s = logits(2)
    term = kd.losses.LogitsDistillation(2.0, standardize=True)
    np.testing.assert_allclose(
        call(term, z_t, 3.0 * z_s + 5.0), call(term, z_t, z_s), rtol=1e-4, atol=1e-6
    )


def test_subset_kd_standardizes_the_restricted_teacher_logits():
    rng = np.random.default_rng(3)
    z_t = (rng.normal(size=(8, 20)) * 4).astype("float32")
    z_s = rng.normal(size=(8, 3)).astype("float32")
    indices = [3, 11, 17]
    term = kd.losses.SubsetLogitsDistillation(indices, 2.0, standardize=True)
    want = np_kd(np_standardize(z_t[:, indices]), np_standardize(z_s), 2.0)
    np.testing.assert_allclose(call(term, z_t, z_s), want, rtol=1e-4, atol=1e-6)


def test_dkd_with_standardization_matches_official():
    z_t, z_s = logits(4)
    y = np.random.default_rng(4).integers(0, 10, 16)
    term = kd.losses.DecoupledDistillation(
        1.0, 8.0, 2.0, warmup_epochs=0, standardize=True
    )
    got = call(term, z_t, z_s, labels=y)
    s_t, s_s = np_standardize(z_t), np_standardize(z_s)
    gt = np.eye(10)[y]
    p_t, log_p_s = np.exp(np_log_softmax(s_t / 2)), np_log_softmax(s_s / 2)
    b_t = np.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    p_s = np.exp(log_p_s)
    b_s = np.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    tckd = 4 * np.sum(b_t * (np.log(b_t) - np.log(b_s)), 1)
    hat_t = np.exp(np_log_softmax(s_t / 2 - 1000 * gt))
    hat_s = np_log_softmax(s_s / 2 - 1000 * gt)
    nckd = (
        8
        * 4
        * np.sum(np.where(gt > 0, 0.0, hat_t * (np.log(hat_t + 1e-300) - hat_s)), 1)
    )
    np.testing.assert_allclose(got["tckd"], tckd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["nckd"], nckd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_standardization_mixed_precision_inputs_give_float32(dtype):
    z_t, z_s = logits(5)
    term = kd.losses.LogitsDistillation(2.0, standardize=True)
    value = term(
        [{"logits": ops.cast(z_t, dtype)}],
        {"logits": ops.cast(z_s, dtype)},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = lambda z: ops.convert_to_numpy(ops.cast(ops.cast(z, dtype), "float32"))
    want = np_kd(np_standardize(rounded(z_t)), np_standardize(rounded(z_s)), 2.0)
    np.testing.assert_allclose(ops.convert_to_numpy(value), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "term",
    [
        kd.losses.LogitsDistillation(standardize=True),
        kd.losses.DecoupledDistillation(standardize=True),
    ],
)
def test_standardization_rejects_a_soft_label_teacher_at_build(term):
    student = small_cnn(4, name="student")
    with pytest.raises(ValueError, match="standardize=False"):
        kd.Distiller(kd.SoftLabelTeacher(np.eye(10)), student, term)


def test_standardize_config_round_trip():
    for term in [
        kd.losses.LogitsDistillation(2.0, standardize=True),
        kd.losses.SubsetLogitsDistillation([0, 2], standardize=True),
    ]:
        clone = type(term).from_config(term.get_config())
        assert clone.standardize and clone.get_config() == term.get_config()


def test_standardized_kd_gradients_reach_the_student_not_the_teacher(
    digits, trained_teacher
):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(2)
    student = small_cnn(4, name="student")
    teacher_before = all_values(trained_teacher)
    student_before = trainable_values(student)
    distiller = kd.Distiller(
        trained_teacher,
        student,
        kd.losses.LogitsDistillation(2.0, standardize=True),
        distillation_loss_weights=[9.0],
        student_loss_weight=0.0,
        weighting="additive",
    )
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    history = fit_steps(distiller, x_train, y_train)
    np.testing.assert_allclose(
        history["total_loss"], 9.0 * np.array(history["logits_distillation"]), rtol=1e-5
    )
    # A zero CE weight: only the standardized KD term moves the student.
    assert_all_moved(student_before, trainable_values(student))
    assert_unchanged(teacher_before, all_values(trained_teacher))
