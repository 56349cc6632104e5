"""DKD against a NumPy transcription of the paper and mdistiller's reductions."""

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

pytestmark = pytest.mark.multi_backend


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl_sum(target, log_pred):
    """torch's kl_div(..., size_average=False): Σ over batch and classes."""
    safe = np.where(target > 0, target, 1.0)
    return np.sum(np.where(target > 0, target * (np.log(safe) - log_pred), 0.0))


def np_dkd_official(z_s, z_t, y, alpha, beta, t):
    """mdistiller's dkd_loss (float64): batch means of T²-scaled KLs."""
    z_s, z_t = z_s.astype("float64"), z_t.astype("float64")
    n = len(y)
    gt = np.zeros_like(z_s)
    gt[np.arange(n), y] = 1.0
    p_s, p_t = np_softmax(z_s / t), np_softmax(z_t / t)
    b_s = np.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = np.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = np_kl_sum(b_t, np.log(b_s)) * t**2 / n
    hat_t = np_softmax(z_t / t - 1000.0 * gt)
    log_hat_s = np.log(np_softmax(z_s / t - 1000.0 * gt) + 1e-300)
    nckd = np_kl_sum(hat_t, log_hat_s) * t**2 / n
    return alpha * tckd, beta * nckd


def run(term, z_t, z_s, y, **kwargs):
    value = term(
        [{"logits": ops.convert_to_tensor(z_t)}],
        {"logits": ops.convert_to_tensor(z_s)},
        labels=ops.convert_to_tensor(y),
        teacher_weights=[1.0],
        **kwargs,
    )
    return {k: ops.convert_to_numpy(v) for k, v in value.items()}


def logits(seed, n=16, c=10, scale=3.0):
    rng = np.random.default_rng(seed)
    z_t, z_s = (rng.normal(size=(2, n, c)) * scale).astype("float32")
    return z_t, z_s, rng.integers(0, c, size=n)


@pytest.mark.parametrize("alpha,beta,t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_official_reduction(alpha, beta, t):
    z_t, z_s, y = logits(0)
    term = kd.losses.DecoupledDistillation(alpha, beta, t, warmup_epochs=0)
    got = run(term, z_t, z_s, y)
    tckd, nckd = np_dkd_official(z_s, z_t, y, alpha, beta, t)
    # Our per-sample values, averaged as the Distiller does, equal the
    # official sum-over-batch-and-classes divided by the batch size.
    assert got["tckd"].shape == got["nckd"].shape == (16,)
    np.testing.assert_allclose(got["tckd"].mean(), tckd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["nckd"].mean(), nckd, rtol=1e-4, atol=1e-6)


def test_dkd_per_sample_and_one_hot_labels():
    z_t, z_s, y = logits(1, n=6)
    term = kd.losses.DecoupledDistillation(warmup_epochs=0)
    sparse = run(term, z_t, z_s, y)
    one_hot = run(term, z_t, z_s, np.eye(10, dtype="float32")[y])
    for i in range(6):
        tckd, nckd = np_dkd_official(
            z_s[i : i + 1], z_t[i : i + 1], y[i : i + 1], 1.0, 8.0, 4.0
        )
        np.testing.assert_allclose(sparse["tckd"][i], tckd, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sparse["nckd"][i], nckd, rtol=1e-4, atol=1e-6)
    for key in sparse:
        np.testing.assert_allclose(one_hot[key], sparse[key], rtol=1e-6)


def test_dkd_warmup_factor_follows_epoch_variable():
    z_t, z_s, y = logits(2)
    term = kd.losses.DecoupledDistillation(warmup_epochs=20)
    full = kd.losses.DecoupledDistillation(warmup_epochs=0)
    reference = run(full, z_t, z_s, y)
    for epoch in (0, 4, 19, 30):
        term.on_epoch_begin(epoch)
        got = run(term, z_t, z_s, y)
        # mdistiller: min(epoch / warmup, 1) with epochs counted from 1.
        factor = min((epoch + 1) / 20, 1.0)
        for key in got:
            np.testing.assert_allclose(
                got[key], factor * reference[key], rtol=1e-5, atol=1e-8
            )


def test_dkd_saturated_teacher_and_student_are_finite():
    z_t, z_s, y = logits(3, scale=1.0)
    z_t[np.arange(16), y] = 80.0
    z_s[np.arange(16), y] = 80.0
    got = run(
        kd.losses.DecoupledDistillation(temperature=1.0, warmup_epochs=0), z_t, z_s, y
    )
    assert all(np.isfinite(v).all() for v in got.values())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dkd_mixed_precision_inputs_give_float32(dtype):
    z_t, z_s, y = logits(4)
    term = kd.losses.DecoupledDistillation(warmup_epochs=0)
    value = term(
        [{"logits": ops.cast(z_t, dtype)}],
        {"logits": ops.cast(z_s, dtype)},
        labels=y,
        teacher_weights=[1.0],
    )
    rounded = lambda z: ops.convert_to_numpy(ops.cast(ops.cast(z, dtype), "float32"))
    tckd, nckd = np_dkd_official(rounded(z_s), rounded(z_t), y, 1.0, 8.0, 4.0)
    assert {keras.backend.standardize_dtype(v.dtype) for v in value.values()} == {
        "float32"
    }
    np.testing.assert_allclose(float(ops.mean(value["tckd"])), tckd, rtol=1e-3)
    np.testing.assert_allclose(float(ops.mean(value["nckd"])), nckd, rtol=1e-3)


def test_dkd_rejects_bad_arguments_and_missing_labels():
    with pytest.raises(ValueError, match="temperature"):
        kd.losses.DecoupledDistillation(temperature=0.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        kd.losses.DecoupledDistillation(warmup_epochs=-1)
    with pytest.raises(ValueError, match="alpha and beta"):
        kd.losses.DecoupledDistillation(beta=-1.0)
    z_t, z_s, _ = logits(5)
    with pytest.raises(ValueError, match="labels"):
        kd.losses.DecoupledDistillation()(
            [{"logits": z_t}], {"logits": z_s}, teacher_weights=[1.0]
        )


def test_dkd_config_round_trip():
    term = kd.losses.DecoupledDistillation(2.0, 6.0, 3.0, 5, standardize=True)
    clone = kd.losses.DecoupledDistillation.from_config(term.get_config())
    assert clone.get_config() == term.get_config()


def _frozen_distiller(term, seed=0):
    keras.utils.set_random_seed(seed)
    teacher = small_cnn(8, name="teacher")
    student = small_cnn(4, name="student")
    distiller = kd.Distiller(
        teacher, student, term, student_loss_weight=1.0, weighting="additive"
    )
    # A zero learning rate keeps the models fixed, so the term's metric
    # changes only by the warm-up factor.
    distiller.compile(keras.optimizers.SGD(0.0), sparse_ce())
    return distiller


def test_dkd_warmup_moves_inside_compiled_fit_and_after_resume():
    rng = np.random.default_rng(6)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    fit = dict(batch_size=32, shuffle=False, verbose=0)
    distiller = _frozen_distiller(kd.losses.DecoupledDistillation(warmup_epochs=3))
    history = distiller.fit(x, y, epochs=3, **fit).history["decoupled_distillation"]
    base = history[2]
    np.testing.assert_allclose(history, [base / 3, 2 * base / 3, base], rtol=1e-4)
    # A resumed run starts at the warm-up factor of its initial epoch.
    resumed = _frozen_distiller(kd.losses.DecoupledDistillation(warmup_epochs=3))
    history = resumed.fit(x, y, epochs=2, initial_epoch=1, **fit).history
    np.testing.assert_allclose(
        history["decoupled_distillation"][0], 2 * base / 3, rtol=1e-4
    )


def test_dkd_gradients_reach_the_student_not_the_teacher(digits, trained_teacher):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(1)
    student = small_cnn(4, name="student")
    teacher_before = all_values(trained_teacher)
    student_before = trainable_values(student)
    distiller = kd.Distiller(
        trained_teacher,
        student,
        kd.losses.DecoupledDistillation(beta=8.0, warmup_epochs=2),
        student_loss_weight=0.0,
        weighting="additive",
    )
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    history = fit_steps(distiller, x_train, y_train)
    # With a zero CE weight, only DKD's gradient can move the student's
    # trainable variables (Adam leaves a zero-gradient variable in place).
    assert_all_moved(student_before, trainable_values(student), "student variable")
    assert_unchanged(teacher_before, all_values(trained_teacher))
    # Epoch 0 of a 2-epoch warm-up: total = (TCKD + NCKD) at factor 1/2.
    np.testing.assert_allclose(
        history["total_loss"][0],
        history["decoupled_distillation_tckd"][0]
        + history["decoupled_distillation_nckd"][0],
        rtol=1e-4,
    )
    assert history["decoupled_distillation_nckd"][0] > 0
