"""Sequence models: (batch, length, vocabulary) logits with a per-token
`sample_weight` (padding mask), against NumPy."""

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce
from keras import ops

import keras_kd as kd
from keras_kd.losses.base import weighted_mean

pytestmark = pytest.mark.multi_backend

VOCAB, LENGTH = 7, 5


def token_lm(width, name):
    """Embedding → Dense → per-token logits `(batch, LENGTH, VOCAB)`."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, width, name="embed")(inputs)
    h = keras.layers.Dense(width, activation="tanh", name="hidden")(h)
    # Spread-out logits, so the KD term is not lost in float32 rounding.
    head = keras.layers.Dense(VOCAB, kernel_initializer="he_normal", name="logits")
    return keras.Model(inputs, head(h * 4.0), name=name)


def token_batch(n=4, seed=0):
    """Tokens, next-token labels and a padding mask whose row 1 is all
    padding and row 0 ends in padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (n, LENGTH)).astype("int32")
    mask = np.ones((n, LENGTH), "float32")
    mask[0, 3:] = 0.0
    mask[1] = 0.0
    return tokens, np.roll(tokens, -1, axis=1), mask


def np_token_kd(z_t, z_s, t):
    """`T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))` per token."""
    p_t = numpy_softmax(z_t / t)
    return t * t * np.sum(p_t * (np.log(p_t) - numpy_log_softmax(z_s / t)), -1)


def value(x):
    return float(ops.convert_to_numpy(x))


def test_weighted_mean_over_real_tokens():
    rng = np.random.default_rng(0)
    v = rng.random((4, LENGTH)).astype("float32")
    _, _, mask = token_batch()
    expected = (v * mask).sum() / mask.sum()
    np.testing.assert_allclose(value(weighted_mean(v, mask)), expected, rtol=1e-6)
    row = np.array([1.0, 0.0, 2.0, 1.0], "float32")  # (batch,) weights
    expected = (v * row[:, None]).sum() / (row.sum() * LENGTH)
    np.testing.assert_allclose(value(weighted_mean(v, row)), expected, rtol=1e-6)
    # Padding only (a batch of one fully padded row): 0, not NaN.
    assert value(weighted_mean(v[1:2], mask[1:2])) == 0.0
    np.testing.assert_allclose(
        value(weighted_mean(v[:1], mask[:1])), v[0, :3].mean(), rtol=1e-6
    )
    # A padded position's non-finite value does not reach the mean.
    bad = v.copy()
    bad[1, 0] = np.inf
    np.testing.assert_allclose(
        value(weighted_mean(bad, mask)), (v * mask).sum() / mask.sum(), rtol=1e-6
    )
    # Per-sample values keep Keras' reduction; token weights count by row mean.
    per_sample = v[:, 0]
    np.testing.assert_allclose(
        value(weighted_mean(per_sample, mask)),
        np.mean(per_sample * mask.mean(-1)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("weights", ["tokens", "rows"])
def test_logits_distillation_compute_loss_per_token(weights):
    rng = np.random.default_rng(1)
    z_t, z_s = rng.normal(size=(2, 4, LENGTH, VOCAB)).astype("float32") * 3
    _, _, mask = token_batch()
    w = mask if weights == "tokens" else np.array([1.0, 0.0, 2.0, 1.0], "float32")
    kl = np_token_kd(z_t, z_s, 2.0)
    w_tokens = np.broadcast_to(w if w.ndim == 2 else w[:, None], kl.shape)
    expected = (kl * w_tokens).sum() / w_tokens.sum()
    term = kd.losses.LogitsDistillation(temperature=2.0)
    got = value(term.compute_loss(z_t, z_s, sample_weight=w))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(value(term.compute_loss(z_t, z_s)), kl.mean(), rtol=1e-5)


def test_distiller_loss_with_a_padding_mask_matches_numpy():
    keras.utils.set_random_seed(0)
    teacher, student = token_lm(8, "t"), token_lm(4, "s")
    distiller = kd.Distiller(
        teacher,
        student,
        kd.losses.LogitsDistillation(temperature=2.0),
        student_loss_weight=0.3,
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y, mask = token_batch()
    y_pred = distiller(x, training=True)
    loss = value(distiller.compute_loss(x, y, y_pred, sample_weight=mask))
    z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
    z_t = ops.convert_to_numpy(y_pred["teachers"][0]["logits"])
    assert z_s.shape == (4, LENGTH, VOCAB)
    ce = -np.take_along_axis(numpy_log_softmax(z_s), y[..., None], -1)[..., 0]
    student_loss = (ce * mask).sum() / ce.size  # Keras' own reduction.
    kd_loss = (np_token_kd(z_t, z_s, 2.0) * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, 0.3 * student_loss + 0.7 * kd_loss, rtol=1e-5)
    np.testing.assert_allclose(
        value(distiller.distillation_loss_tracker.result()), kd_loss, rtol=1e-4
    )


def test_fit_and_evaluate_a_sequence_model_with_a_padding_mask():
    keras.utils.set_random_seed(0)
    teacher, student = token_lm(8, "t"), token_lm(4, "s")
    distiller = kd.Distiller(
        teacher, student, kd.losses.LogitsDistillation(temperature=2.0)
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=sparse_ce(),
        weighted_metrics=["accuracy"],
    )
    x, y, mask = token_batch(n=5)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    # Batches of 2, 2 and 1: the first holds the fully padded row.
    history = distiller.fit(
        x, y, sample_weight=mask, batch_size=2, epochs=1, shuffle=False, verbose=0
    ).history
    for name, values in history.items():
        assert np.all(np.isfinite(values)), (name, values)
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    result = distiller.evaluate(
        x, y, sample_weight=mask, batch_size=5, verbose=0, return_dict=True
    )
    z_t = teacher.predict(x, verbose=0)
    z_s = student.predict(x, verbose=0)
    kd_loss = (np_token_kd(z_t, z_s, 2.0) * mask).sum() / mask.sum()
    np.testing.assert_allclose(result["logits_distillation"], kd_loss, rtol=1e-4)
    hits = (np.argmax(z_s, -1) == y) * mask
    np.testing.assert_allclose(result["accuracy"], hits.sum() / mask.sum(), rtol=1e-5)
