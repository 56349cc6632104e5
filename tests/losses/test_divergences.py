"""`LogitsDistillation(divergence=...)`: forward KL, reverse KL and GKD's
generalized JSD against NumPy (float64, from the formulas in probability
space), per sample and per token under a padding mask."""

import keras
import numpy as np
import pytest
from helpers import gradient
from helpers import sparse_ce
from keras import ops
from test_sequence_distillation import token_batch
from test_sequence_distillation import token_lm

import keras_kd as kd
from keras_kd.losses.base import weighted_mean

pytestmark = pytest.mark.multi_backend

BETAS = (0.0, 0.5, 0.9, 1.0)
FLOOR = float(np.finfo("float32").tiny)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p, q):
    """KL(p ‖ q) over the last axis, 0 · log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    safe = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * (np.log(safe) - np.log(q)), 0.0), axis=-1)


def np_divergence(p_t, p_s, divergence, beta, t):
    """T² · the divergence, with TRL's ends: β=0 forward, β=1 reverse KL."""
    if divergence == "kl" or (divergence == "jsd" and beta == 0):
        value = np_kl(p_t, p_s)
    elif divergence == "reverse_kl" or beta == 1:
        value = np_kl(p_s, p_t)
    else:
        m = beta * p_t + (1 - beta) * p_s
        value = beta * np_kl(p_t, m) + (1 - beta) * np_kl(p_s, m)
    return t * t * value


def np_logits_divergence(z_t, z_s, divergence, beta, t):
    z_t, z_s = np.float64(z_t), np.float64(z_s)
    return np_divergence(np_softmax(z_t / t), np_softmax(z_s / t), divergence, beta, t)


def cases():
    yield "kl", 0.5
    yield "reverse_kl", 0.5
    for beta in BETAS:
        yield "jsd", beta


def run(term, teacher_outputs, student_logits, weights=None):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    weights = weights or [1.0 / len(teacher_outputs)] * len(teacher_outputs)
    return term(
        [tensors(out) for out in teacher_outputs],
        tensors({"logits": student_logits}),
        teacher_weights=weights,
    )


def logits(shape, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype("float32")


@pytest.mark.parametrize("t", [1.0, 4.0])
@pytest.mark.parametrize("divergence,beta", list(cases()))
def test_per_sample_values_match_numpy(divergence, beta, t):
    z_t, z_s = logits((6, 11), 0), logits((6, 11), 1)
    term = kd.losses.LogitsDistillation(t, divergence=divergence, beta=beta)
    got = ops.convert_to_numpy(run(term, [{"logits": z_t}], z_s))
    expected = np_logits_divergence(z_t, z_s, divergence, beta, t)
    assert got.shape == (6,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    mean = ops.convert_to_numpy(term.compute_loss(z_t, z_s))
    np.testing.assert_allclose(mean, expected.mean(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 4.0])
@pytest.mark.parametrize("divergence,beta", list(cases()))
def test_per_token_mean_over_real_tokens_matches_numpy(divergence, beta, t):
    z_t, z_s = logits((4, 5, 9), 2), logits((4, 5, 9), 3)
    mask = np.ones((4, 5), "float32")
    mask[0, 3:] = 0.0
    mask[2] = 0.0  # A fully padded row.
    term = kd.losses.LogitsDistillation(t, divergence=divergence, beta=beta)
    per_token = run(term, [{"logits": z_t}], z_s)
    expected = np_logits_divergence(z_t, z_s, divergence, beta, t)
    assert tuple(per_token.shape) == (4, 5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_token), expected, rtol=2e-5, atol=1e-6
    )
    want = (expected * mask).sum() / mask.sum()
    for got in (
        weighted_mean(per_token, mask),
        term.compute_loss(z_t, z_s, sample_weight=mask),
    ):
        np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=2e-5)


def test_beta_ends_are_trl_forward_and_reverse_kl():
    z_t, z_s = logits((3, 4, 7), 4), logits((3, 4, 7), 5)
    value = lambda **kw: ops.convert_to_numpy(
        run(kd.losses.LogitsDistillation(2.0, **kw), [{"logits": z_t}], z_s)
    )
    # β = 0 is KL(p_t ‖ p_s), the default term to the bit; β = 1 is
    # KL(p_s ‖ p_t), as TRL's generalized_jsd_loss defines the ends.
    np.testing.assert_array_equal(value(divergence="jsd", beta=0.0), value())
    np.testing.assert_array_equal(
        value(divergence="jsd", beta=1.0), value(divergence="reverse_kl")
    )
    p_t, p_s = np_softmax(np.float64(z_t) / 2), np_softmax(np.float64(z_s) / 2)
    np.testing.assert_allclose(value(), 4 * np_kl(p_t, p_s), rtol=2e-5)
    np.testing.assert_allclose(
        value(divergence="reverse_kl"), 4 * np_kl(p_s, p_t), rtol=2e-5
    )
    # Between the ends the mixture formula tends to β·KL(p_t ‖ p_s).
    small = value(divergence="jsd", beta=1e-3) / 1e-3
    np.testing.assert_allclose(small, 4 * np_kl(p_t, p_s), rtol=2e-2)


@pytest.mark.parametrize("divergence,beta", list(cases()))
def test_several_teachers_mix_their_probabilities(divergence, beta):
    z_a, z_b, z_s = logits((5, 8), 6), logits((5, 8), 7), logits((5, 8), 8)
    term = kd.losses.LogitsDistillation(2.0, divergence=divergence, beta=beta)
    got = run(term, [{"logits": z_a}, {"logits": z_b}], z_s, [0.25, 0.75])
    p_t = 0.25 * np_softmax(np.float64(z_a) / 2) + 0.75 * np_softmax(
        np.float64(z_b) / 2
    )
    expected = np_divergence(p_t, np_softmax(np.float64(z_s) / 2), divergence, beta, 2)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=2e-5)


@pytest.mark.parametrize("divergence,beta", list(cases()))
def test_label_teacher_probabilities_with_zeros(divergence, beta):
    # A kd.SoftLabelTeacher's rows, used as given; a 0 stays finite.
    p_t = np.full((3, 4), 0.25, "float32")
    p_t[0] = [0.0, 0.5, 0.5, 0.0]
    p_t[1] = [1.0, 0.0, 0.0, 0.0]
    z_s = logits((3, 4), 9)
    term = kd.losses.LogitsDistillation(3.0, divergence=divergence, beta=beta)
    got = ops.convert_to_numpy(run(term, [{"probabilities": p_t}], z_s))
    p_s = np_softmax(np.float64(z_s) / 3)
    floored = np.maximum(np.float64(p_t), FLOOR)
    reverse = divergence == "reverse_kl" or (divergence == "jsd" and beta == 1)
    expected = np_divergence(floored if reverse else p_t, p_s, divergence, beta, 3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=2e-5)


@pytest.mark.parametrize("divergence,beta", list(cases()))
def test_gradients_are_finite_with_extreme_logits(divergence, beta):
    z_t = np.where(logits((2, 3, 6), 10) > 0, 50.0, -50.0).astype("float32")
    z_s = keras.Variable(np.where(logits((2, 3, 6), 11) > 0, 50.0, -50.0))
    term = kd.losses.LogitsDistillation(1.0, divergence=divergence, beta=beta)
    teacher = [{"logits": ops.convert_to_tensor(z_t)}]

    def loss(x):
        return ops.mean(term(teacher, {"logits": x}, teacher_weights=[1.0]))

    value = ops.convert_to_numpy(loss(z_s.value))
    grad = gradient(loss, z_s)
    assert np.isfinite(value) and np.isfinite(grad).all()
    expected = np_logits_divergence(z_t, z_s.numpy(), divergence, beta, 1.0)
    np.testing.assert_allclose(value, expected.mean(), rtol=1e-4)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_float16_inputs_give_a_float32_loss(divergence):
    z_t, z_s = logits((2, 3, 5), 12), logits((2, 3, 5), 13)
    term = kd.losses.LogitsDistillation(2.0, divergence=divergence)
    got = term(
        [{"logits": ops.convert_to_tensor(z_t.astype("float16"))}],
        {"logits": ops.convert_to_tensor(z_s.astype("float16"))},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    expected = np_logits_divergence(
        z_t.astype("float16"), z_s.astype("float16"), divergence, 0.5, 2.0
    )
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-4)


def test_config_round_trip():
    term = kd.losses.LogitsDistillation(2.0, divergence="jsd", beta=0.9, name="gkd")
    restored = kd.losses.LogitsDistillation.from_config(term.get_config())
    assert (restored.divergence, restored.beta, restored.temperature) == (
        "jsd",
        0.9,
        2.0,
    )
    assert restored.name == "gkd"
    old = {
        k: v for k, v in term.get_config().items() if k not in ("divergence", "beta")
    }
    assert kd.losses.LogitsDistillation.from_config(old).divergence == "kl"


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="Unknown divergence 'js'.*'jsd'"):
        kd.losses.LogitsDistillation(divergence="js")
    for beta in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="beta must be"):
            kd.losses.LogitsDistillation(divergence="jsd", beta=beta)
    with pytest.raises(ValueError, match="divergence='reverse_kl', loss='mse'"):
        kd.losses.LogitsDistillation(divergence="reverse_kl", loss="mse")
    # A KL `loss` and the default divergence combine with either.
    kd.losses.LogitsDistillation(divergence="jsd", loss=keras.losses.KLDivergence())
    kd.losses.LogitsDistillation(loss="mse")


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_distiller_term_is_the_mean_over_real_tokens(divergence):
    keras.utils.set_random_seed(0)
    teacher, student = token_lm(8, "t"), token_lm(4, "s")
    term = kd.losses.LogitsDistillation(2.0, divergence=divergence, beta=0.9)
    distiller = kd.Distiller(teacher, student, term, student_loss_weight=0.3)
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y, mask = token_batch()  # Row 1 is all padding.
    y_pred = distiller(x, training=True)
    distiller.compute_loss(x, y, y_pred, sample_weight=mask)
    z_t = ops.convert_to_numpy(y_pred["teachers"][0]["logits"])
    z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
    per_token = np_logits_divergence(z_t, z_s, divergence, 0.9, 2.0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(distiller.distillation_loss_tracker.result()),
        (per_token * mask).sum() / mask.sum(),
        rtol=1e-4,
        atol=1e-6,  # A float32 sum of near-cancelling terms.
    )
