"""`SparseKLDistillation` / `sparse_kl`: the top-k KL of a token record
against NumPy (float64, from the teacher's dense softmax), both tail
handlings, k = V equal to the dense KL, finite gradients at padding."""

import keras
import numpy as np
import pytest
from helpers import gradient
from keras import ops

import keras_kd as kd
from keras_kd.losses.base import weighted_mean
from keras_kd.losses.sparse_kl_distillation import sparse_kl

pytestmark = pytest.mark.multi_backend

V = 11


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_top_k(z_t, k, t):
    """What a record at temperature `t` holds: `T·log p`, indices, log r."""
    p = np_softmax(np.float64(z_t) / t)
    indices = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(p, indices, axis=-1)
    with np.errstate(divide="ignore"):
        log_tail = np.log(np.maximum(1.0 - top.sum(-1), 0.0)) if k < V else None
    if log_tail is None:
        log_tail = np.full(p.shape[:-1], -np.inf)
    return t * np.log(top), indices, log_tail


def np_sparse_kl(z_t, z_s, k, t, handling):
    """T² · the sparse KL from the dense teacher softmax, in float64."""
    p = np_softmax(np.float64(z_t) / t)
    q = np_softmax(np.float64(z_s) / t)
    indices = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    p_k = np.take_along_axis(p, indices, axis=-1)
    q_k = np.take_along_axis(q, indices, axis=-1)
    if handling == "zero":
        p_hat = p_k / p_k.sum(-1, keepdims=True)
        return t * t * np.sum(p_hat * np.log(p_hat / q_k), -1)
    r, r_q = 1.0 - p_k.sum(-1), 1.0 - q_k.sum(-1)
    tail = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0) / r_q), 0.0)
    return t * t * (np.sum(p_k * np.log(p_k / q_k), -1) + tail)


def np_dense_kl(z_t, z_s, t):
    p = np_softmax(np.float64(z_t) / t)
    q = np_softmax(np.float64(z_s) / t)
    return t * t * np.sum(p * np.log(p / q), -1)


def logits(seed, shape=(3, 4, V), scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32") * scale


def run(z_t, z_s, k, t, handling, record_t=None):
    top, indices, tail = np_top_k(z_t, k, record_t or t)
    return ops.convert_to_numpy(
        sparse_kl(
            z_s,
            np.float32(top),
            np.int32(indices),
            np.float32(tail),
            temperature=t,
            missing_probability_handling=handling,
        )
    )


@pytest.mark.parametrize("handling", ["zero", "symmetric_uniform"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_sparse_kl_matches_numpy(handling, k):
    z_t, z_s = logits(0), logits(1)
    for t in (1.0, 2.0):
        got = run(z_t, z_s, k, t, handling)
        want = np_sparse_kl(z_t, z_s, k, t, handling)
        assert got.shape == (3, 4)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    # The tail bucket keeps the mass the renormalisation drops: the two
    # handlings differ while k < V.
    other = "zero" if handling != "zero" else "symmetric_uniform"
    assert np.abs(np_sparse_kl(z_t, z_s, k, 2.0, other) - want).max() > 1e-4


def test_zero_is_exact_at_another_temperature_than_recorded():
    z_t, z_s = logits(2), logits(3)
    got = run(z_t, z_s, 4, 2.0, "zero", record_t=1.0)
    np.testing.assert_allclose(got, np_sparse_kl(z_t, z_s, 4, 2.0, "zero"), rtol=2e-5)


@pytest.mark.parametrize("handling", ["zero", "symmetric_uniform"])
def test_k_equal_to_the_vocabulary_is_the_dense_kl(handling):
    z_t, z_s = logits(4), logits(5)
    for t in (1.0, 4.0):
        got = run(z_t, z_s, V, t, handling)
        dense = kd.losses.LogitsDistillation(temperature=t)(
            [{"logits": z_t}], {"logits": z_s}, teacher_weights=[1.0]
        )
        np.testing.assert_allclose(got, ops.convert_to_numpy(dense), rtol=1e-5)
        np.testing.assert_allclose(got, np_dense_kl(z_t, z_s, t), rtol=1e-5)


def test_term_reduces_over_real_tokens_with_finite_gradients():
    z_t, z_s = logits(6), logits(7)
    top, indices, tail = np_top_k(z_t, V, 1.0)  # No tail: log r = -inf.
    mask = np.ones((3, 4), "float32")
    mask[0, 2:] = 0.0
    mask[1] = 0.0
    # Padding fillers, as the replay lays them out.
    top[mask == 0], indices[mask == 0] = 0.0, 0
    outputs = [
        {
            "topk_logits": np.float32(top),
            "topk_indices": np.int32(indices),
            "tail_log_mass": np.float32(tail),
        }
    ]
    for handling in ("zero", "symmetric_uniform"):
        term = kd.losses.SparseKLDistillation(1.0, handling)

        def loss(z, term=term):
            value = term(outputs, {"logits": z}, teacher_weights=[1.0])
            return weighted_mean(value, mask)

        want = np_dense_kl(z_t, z_s, 1.0)
        want = (want * mask).sum() / mask.sum()
        got = float(ops.convert_to_numpy(loss(z_s)))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        grad = gradient(loss, keras.Variable(z_s))
        assert np.isfinite(grad).all()
        assert np.abs(grad[1]).max() == 0.0  # A padded row gets nothing.


def test_config_round_trip_and_bad_arguments():
    term = kd.losses.SparseKLDistillation(2.0, "symmetric_uniform", name="skl")
    again = kd.losses.SparseKLDistillation.from_config(term.get_config())
    assert again.temperature == 2.0 and again.name == "skl"
    assert again.missing_probability_handling == "symmetric_uniform"
    with pytest.raises(ValueError, match="Unknown missing_probability_handling"):
        kd.losses.SparseKLDistillation(missing_probability_handling="uniform")
    with pytest.raises(ValueError, match="temperature must be positive"):
        kd.losses.SparseKLDistillation(0.0)
