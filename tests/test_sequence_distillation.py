"""Sequence models: (batch, length, vocabulary) logits with a per-token
`sample_weight` (padding mask), against NumPy."""

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce
from keras import ops
from losses.test_curriculum_temperature import np_ctkd
from losses.test_decoupled_distillation import np_dkd_official
from losses.test_logit_standardization import np_standardize

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
    # Per-sample values keep Keras' reduction, under (batch,) or (batch, 1)
    # weights; per-token weights are refused, naming the term.
    per_sample = v[:, 0]
    for w in (row, row[:, None]):
        np.testing.assert_allclose(
            value(weighted_mean(per_sample, w)), np.mean(per_sample * row), rtol=1e-6
        )
    with pytest.raises(ValueError, match="Term 'fd' gives one value per sample"):
        weighted_mean(per_sample, mask, "fd")
    with pytest.raises(ValueError, match="one value per batch.*LogitsDistillation"):
        weighted_mean(v.sum(), mask)


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


def np_masked_mean(v, w):
    """The mean over real tokens, `Σ w·v / Σ w`."""
    return (v * w).sum() / w.sum()


def np_mixture_kd(z_ts, weights, z_s, t):
    """Per-token `T² · KL(Σ_m w_m softmax(z_t^m/T) ‖ softmax(z_s/T))`."""
    p = sum(w * numpy_softmax(z / t) for w, z in zip(weights, z_ts))
    return t * t * np.sum(p * (np.log(p) - numpy_log_softmax(z_s / t)), -1)


def np_token_dkd(z_t, z_s, y, alpha, beta, t, factor=1.0):
    """`(TCKD, NCKD)` per token: mdistiller's dkd_loss on each token alone."""
    parts = [
        np_dkd_official(z_s[i][None], z_t[i][None], y[i][None], alpha, beta, t)
        for i in np.ndindex(y.shape)
    ]
    return factor * np.reshape(parts, y.shape + (2,)).transpose(2, 0, 1)


def np_cosine_distance(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    return 1.0 - np.sum(a * b / np.linalg.norm(b, axis=-1, keepdims=True), -1)


def token_logits(seed=2, classes=VOCAB):
    rng = np.random.default_rng(seed)
    z_t = (rng.normal(size=(4, LENGTH, classes)) * 3).astype("float32")
    z_s = (rng.normal(size=(4, LENGTH, VOCAB)) * 2).astype("float32")
    return z_t, z_s, rng.integers(0, VOCAB, (4, LENGTH))


def _case(name):
    """A sequence-capable term, its inputs' key and class count, and its
    per-token NumPy reference `(z_t, z_s, y) -> (batch, length)`."""
    subset = [8, 0, 3, 5, 1, 7, 2]
    dkd = kd.losses.DecoupledDistillation(1.0, 2.0, 2.0, warmup_epochs=4)
    dkd.on_epoch_begin(1)  # Warm-up factor 2/4.
    keras_kl = keras.distillation.LogitsDistillation(2.0, keras.losses.KLDivergence())
    cases = {
        "kd+ls": (
            kd.losses.LogitsDistillation(2.0, standardize=True),
            lambda z_t, z_s, y: np_token_kd(
                np_standardize(z_t), np_standardize(z_s), 2
            ),
        ),
        "dkd": (
            dkd,
            lambda z_t, z_s, y: np_token_dkd(z_t, z_s, y, 1, 2, 2, 0.5).sum(0),
        ),
        "ctkd": (
            kd.losses.CurriculumTemperatureDistillation(),
            lambda z_t, z_s, y: np_ctkd(z_t, z_s, 1.0),
        ),
        "subset": (
            kd.losses.SubsetLogitsDistillation(subset, 2.0),
            lambda z_t, z_s, y: np_token_kd(z_t[..., subset], z_s, 2.0),
        ),
        "keras_kl": (
            kd.losses.KerasDistillationLoss(keras_kl),
            lambda z_t, z_s, y: np_token_kd(z_t, z_s, 2.0),
        ),
        "keras_mse": (
            kd.losses.KerasDistillationLoss(keras.distillation.FeatureDistillation()),
            lambda z_t, z_s, y: ((z_t - z_s) ** 2).mean(-1),
        ),
        "fd_cosine": (
            kd.losses.FeatureDistillation(loss="cosine"),
            lambda z_t, z_s, y: np_cosine_distance(z_s, z_t),
        ),
    }
    term, reference = cases[name]
    classes = 9 if name == "subset" else VOCAB
    shape = (None, LENGTH, classes)
    term.build([{"logits": shape}], {"logits": (None, LENGTH, VOCAB)})
    return term, classes, reference


def run_term(term, z_t, z_s, y, dtype="float32"):
    out = term(
        [{"logits": ops.cast(z_t, dtype)}],
        {"logits": ops.cast(z_s, dtype)},
        labels=y,
        teacher_weights=[1.0],
    )
    if isinstance(out, dict):
        out = sum(out.values())
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    return out


@pytest.mark.parametrize(
    "name",
    ["kd+ls", "dkd", "ctkd", "subset", "keras_kl", "keras_mse", "fd_cosine"],
)
def test_sequence_terms_are_per_token_and_masked_as_numpy(name):
    term, classes, reference = _case(name)
    z_t, z_s, y = token_logits(classes=classes)
    _, _, mask = token_batch()  # Row 1 all padding, row 0 padded at the end.
    got = run_term(term, z_t, z_s, y)
    want = reference(z_t, z_s, y)
    assert tuple(got.shape) == (4, LENGTH)
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)
    expected = np_masked_mean(want, mask)
    np.testing.assert_allclose(value(weighted_mean(got, mask)), expected, rtol=1e-4)
    # A batch of one, and one fully padded row (0, not NaN).
    one = run_term(term, z_t[:1], z_s[:1], y[:1])
    np.testing.assert_allclose(
        value(weighted_mean(one, mask[:1])), np_masked_mean(want[:1], mask[:1]), 1e-4
    )
    padded = run_term(term, z_t[1:2], z_s[1:2], y[1:2])
    assert value(weighted_mean(padded, mask[1:2])) == 0.0


def test_wrapped_keras_losses_keep_keras_batch_mean():
    z_t, z_s, _ = token_logits()
    for loss in (
        keras.distillation.LogitsDistillation(2.0, keras.losses.KLDivergence()),
        keras.distillation.LogitsDistillation(2.0, "mse"),
        keras.distillation.FeatureDistillation("mae"),
    ):
        got = kd.losses.KerasDistillationLoss(loss)(
            [{"logits": z_t}], {"logits": z_s}, teacher_weights=[1.0]
        )
        assert tuple(got.shape) == (4, LENGTH)
        want = value(loss.compute_loss(z_t, z_s))
        np.testing.assert_allclose(value(ops.mean(got)), want, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sequence_terms_take_mixed_precision_logits(dtype):
    z_t, z_s, y = token_logits()
    rounded = lambda z: ops.convert_to_numpy(ops.cast(ops.cast(z, dtype), "float32"))
    for name in ("kd+ls", "dkd", "ctkd"):
        term, _, reference = _case(name)
        got = ops.convert_to_numpy(run_term(term, z_t, z_s, y, dtype))
        want = reference(rounded(z_t), rounded(z_s), y)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4, err_msg=name)


def test_instance_ctkd_learns_one_temperature_per_token():
    z_t, z_s, _ = token_logits()
    term = kd.losses.CurriculumTemperatureDistillation(mode="instance", hidden_units=8)
    term.build([{"logits": (None, LENGTH, VOCAB)}], {"logits": (None, LENGTH, VOCAB)})
    t = ops.convert_to_numpy(term.current_temperature(z_t, z_s))
    assert t.shape == (4, LENGTH, 1)
    got = ops.convert_to_numpy(run_term(term, z_t, z_s, None))
    log_t, log_s = numpy_log_softmax(z_t / t), numpy_log_softmax(z_s / t)
    want = t[..., 0] ** 2 * np.sum(np.exp(log_t) * (log_t - log_s), -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_distiller_dkd_and_ctkd_over_real_tokens_match_numpy():
    keras.utils.set_random_seed(0)
    teacher, student = token_lm(8, "t"), token_lm(4, "s")
    distiller = kd.Distiller(
        teacher,
        student,
        [
            kd.losses.DecoupledDistillation(1.0, 2.0, 2.0, warmup_epochs=0),
            kd.losses.CurriculumTemperatureDistillation(),
        ],
        distillation_loss_weights=[1.0, 0.5],
        student_loss_weight=0.3,
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y, mask = token_batch()
    # The whole batch, a batch of one, and a fully padded batch of one.
    for rows in (slice(None), slice(0, 1), slice(1, 2)):
        xb, yb, wb = x[rows], y[rows], mask[rows]
        y_pred = distiller(xb, training=True)
        loss = value(distiller.compute_loss(xb, yb, y_pred, sample_weight=wb))
        z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
        z_t = ops.convert_to_numpy(y_pred["teachers"][0]["logits"])
        ce = -np.take_along_axis(numpy_log_softmax(z_s), yb[..., None], -1)[..., 0]
        tckd, nckd = np_token_dkd(z_t, z_s, yb, 1.0, 2.0, 2.0)
        terms = [tckd + nckd, np_ctkd(z_t, z_s, 1.0)]
        kd_loss = sum(
            w * (np_masked_mean(v, wb) if wb.sum() else 0.0)
            for w, v in zip([1.0, 0.5], terms)
        )
        student_loss = (ce * wb).sum() / ce.size  # Keras' own reduction.
        assert np.isfinite(loss)
        np.testing.assert_allclose(
            loss, 0.3 * student_loss + 0.7 * kd_loss, rtol=1e-4, atol=1e-6
        )


def test_two_teachers_and_a_label_teacher_on_sequences_match_numpy():
    keras.utils.set_random_seed(1)
    teachers = [token_lm(8, "t0"), token_lm(6, "t1")]
    student = token_lm(4, "s")
    distiller = kd.Distiller(
        teachers,
        student,
        [
            kd.losses.LogitsDistillation(2.0, standardize=True),
            kd.losses.CurriculumTemperatureDistillation(),
        ],
        teacher_weights=[1.0, 3.0],
        student_loss_weight=0.0,
    )
    distiller.compile(optimizer="adam")
    x, y, mask = token_batch()
    y_pred = distiller(x, training=True)
    loss = value(distiller.compute_loss(x, y, y_pred, sample_weight=mask))
    z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
    z_ts = [ops.convert_to_numpy(out["logits"]) for out in y_pred["teachers"]]
    ls = np_mixture_kd(
        [np_standardize(z) for z in z_ts], [0.25, 0.75], np_standardize(z_s), 2
    )
    t = 1.0 + 20.0 / (1.0 + np.exp(-1.0))
    ctkd = np_mixture_kd(z_ts, [0.25, 0.75], z_s, t)
    want = np_masked_mean(ls, mask) + np_masked_mean(ctkd, mask)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    # A label teacher gives each token its label's row of the table.
    table = numpy_softmax(np.random.default_rng(0).normal(size=(VOCAB, VOCAB)))
    labelled = kd.Distiller(
        kd.SoftLabelTeacher(table),
        student,
        kd.losses.LogitsDistillation(2.0),
        student_loss_weight=0.0,
    )
    labelled.compile(optimizer="adam")
    y_pred = labelled(x, training=True)
    loss = value(labelled.compute_loss(x, y, y_pred, sample_weight=mask))
    p = table[y]
    kl = 4.0 * np.sum(p * (np.log(p) - numpy_log_softmax(z_s / 2.0)), -1)
    np.testing.assert_allclose(loss, np_masked_mean(kl, mask), rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: kd.losses.RelationalKnowledgeDistillation("logits", "logits"),
        lambda: kd.losses.FeatureAlignment("logits", "logits"),
        lambda: kd.losses.SimilarityPreserving(["logits"], ["logits"]),
    ],
    ids=["rkd", "fa", "sp"],
)
def test_whole_sample_terms_refuse_sequence_logits_before_training(make):
    term = make()
    with pytest.raises(ValueError, match=f"{type(term).__name__}.*compares whole"):
        kd.Distiller(token_lm(8, "t"), token_lm(4, "s"), term)


def test_per_token_weights_are_refused_by_batch_level_terms_in_fit():
    keras.utils.set_random_seed(0)
    distiller = kd.Distiller(
        token_lm(8, "t"),
        token_lm(4, "s"),
        [
            kd.losses.LogitsDistillation(2.0),
            kd.losses.RelationalKnowledgeDistillation("hidden", "hidden"),
        ],
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y, mask = token_batch()
    # Raised while the train step is traced (TF, JAX) or first run (torch).
    with pytest.raises(ValueError, match="'relational_knowledge_distillation' gives"):
        distiller.fit(x, y, sample_weight=mask, batch_size=4, verbose=0)


class _MeanAbsGap(keras.distillation.DistillationLoss):
    """A user's keras.distillation loss: a batch scalar."""

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return ops.mean(ops.abs(teacher_outputs - student_outputs))


def test_other_wrapped_keras_losses_give_a_scalar_that_refuses_token_weights():
    z_t, z_s, _ = token_logits()
    _, _, mask = token_batch()
    term = kd.losses.KerasDistillationLoss(_MeanAbsGap())
    got = term([{"logits": z_t}], {"logits": z_s}, teacher_weights=[1.0])
    np.testing.assert_allclose(value(got), np.abs(z_t - z_s).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="one value per batch"):
        weighted_mean(got, mask, term.name)


def test_labels_of_the_wrong_shape_raise():
    z_t, z_s, y = token_logits()
    dkd = kd.losses.DecoupledDistillation(warmup_epochs=0)
    with pytest.raises(ValueError, match="needs one label per token"):
        run_term(dkd, z_t, z_s, y[:, 0])  # (batch,) for sequence logits.
    with pytest.raises(ValueError, match="needs one label per sample"):
        run_term(dkd, z_t[:, 0], z_s[:, 0], y)  # (batch, length) per sample.
    with pytest.raises(ValueError, match="needs one label per token"):
        run_term(dkd, z_t, z_s, y[:, :3])  # Another length.
    one_hot = np.eye(VOCAB, dtype="float32")[y]
    np.testing.assert_allclose(
        ops.convert_to_numpy(run_term(dkd, z_t, z_s, one_hot)),
        ops.convert_to_numpy(run_term(dkd, z_t, z_s, y)),
        rtol=1e-6,
    )
