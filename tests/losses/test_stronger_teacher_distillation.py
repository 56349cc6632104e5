"""DIST against a NumPy transcription of the official loss (dist_kd.py of
hunto/image_classification_sota, DIST_KD's classification code)."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import assert_unchanged
from helpers import fit_steps
from helpers import gradient
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import ops

import keras_kd as kd
from keras_kd.losses.base import weighted_mean

pytestmark = pytest.mark.multi_backend


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_pearson_rows(a, b, eps=1e-8):
    """The official `pearson_correlation`: cosine of row-centred rows, with
    `eps` added to the product of the norms."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / (norms + eps)


def np_dist_official(z_s, z_t, beta, gamma, tau):
    """The official `DIST.forward` (float64): `(loss, inter, intra)`, the
    last two with τ² and without β, γ."""
    y_s = np_softmax(z_s.astype("float64") / tau)
    y_t = np_softmax(z_t.astype("float64") / tau)
    inter = tau**2 * (1.0 - np_pearson_rows(y_s, y_t).mean())
    intra = tau**2 * (1.0 - np_pearson_rows(y_s.T, y_t.T).mean())
    return beta * inter + gamma * intra, inter, intra


def run(term, z_t, z_s, weights=(1.0,)):
    teachers = z_t if isinstance(z_t, list) else [z_t]
    value = term(
        [{"logits": ops.convert_to_tensor(z)} for z in teachers],
        {"logits": ops.convert_to_tensor(z_s)},
        teacher_weights=list(weights),
    )
    return {k: ops.convert_to_numpy(v) for k, v in value.items()}


def logits(seed, n=16, c=10, scale=3.0):
    rng = np.random.default_rng(seed)
    z_t, z_s = (rng.normal(size=(2, n, c)) * scale).astype("float32")
    return z_t, z_s


@pytest.mark.parametrize(
    "beta,gamma,tau", [(1.0, 1.0, 4.0), (1.0, 1.0, 1.0), (2.0, 0.5, 2.0)]
)
def test_dist_matches_official_loss(beta, gamma, tau):
    z_t, z_s = logits(0)
    term = kd.losses.StrongerTeacherDistillation(beta, gamma, tau)
    got = run(term, z_t, z_s)
    loss, inter, intra = np_dist_official(z_s, z_t, beta, gamma, tau)
    assert got["inter"].shape == got["intra"].shape == (16,)
    # The Distiller's batch means of the parts give the official values.
    np.testing.assert_allclose(got["inter"].mean(), beta * inter, rtol=1e-4)
    np.testing.assert_allclose(got["intra"].mean(), gamma * intra, rtol=1e-4)
    total = got["inter"] + got["intra"]
    np.testing.assert_allclose(total.mean(), loss, rtol=1e-4)


def test_dist_inter_is_per_sample_and_intra_is_one_batch_value():
    z_t, z_s = logits(1, n=6)
    got = run(kd.losses.StrongerTeacherDistillation(temperature=4.0), z_t, z_s)
    p_s, p_t = np_softmax(z_s / 4.0), np_softmax(z_t / 4.0)
    want = 16.0 * (1.0 - np_pearson_rows(p_s, p_t))
    np.testing.assert_allclose(got["inter"], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["intra"], np.full(6, got["intra"][0]))
    # A (batch,) sample_weight scales both parts by the Keras batch mean.
    w = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.5], "float32")
    for part in ("inter", "intra"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(weighted_mean(got[part], w)),
            (w * got[part]).mean(),
            rtol=1e-5,
        )


def test_dist_teachers_are_averaged_in_probability_and_label_teachers_read():
    z_t, z_s = logits(2)
    z_t2, _ = logits(3)
    term = kd.losses.StrongerTeacherDistillation(temperature=2.0)
    got = run(term, [z_t, z_t2], z_s, weights=(0.25, 0.75))
    p_t = 0.25 * np_softmax(z_t / 2.0) + 0.75 * np_softmax(z_t2 / 2.0)
    p_s = np_softmax(z_s / 2.0)
    inter = 4.0 * (1.0 - np_pearson_rows(p_s, p_t))
    intra = 4.0 * (1.0 - np_pearson_rows(p_s.T, p_t.T).mean())
    np.testing.assert_allclose(got["inter"], inter, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["intra"][0], intra, rtol=1e-4)
    # A kd.SoftLabelTeacher's rows are the teacher distribution as given.
    table = kd.losses.StrongerTeacherDistillation(temperature=2.0)(
        [{"probabilities": ops.convert_to_tensor(p_t.astype("float32"))}],
        {"logits": ops.convert_to_tensor(z_s)},
        teacher_weights=[1.0],
    )
    np.testing.assert_allclose(ops.convert_to_numpy(table["inter"]), inter, 1e-4)


def _total_loss(term, z_t):
    teacher = [{"logits": ops.convert_to_tensor(z_t)}]

    def loss(z):
        value = term(teacher, {"logits": z}, teacher_weights=[1.0])
        return ops.mean(value["inter"] + value["intra"])

    return loss


def test_dist_batch_of_one_and_constant_predictions_have_finite_gradients():
    z_t, z_s = logits(4, n=1)
    got = run(kd.losses.StrongerTeacherDistillation(gamma=3.0), z_t, z_s)
    # One sample: every class column is constant, correlation 0 (official:
    # 0 / (0 + eps)), so the intra part is γ·τ².
    np.testing.assert_allclose(got["intra"], [3.0])
    term = kd.losses.StrongerTeacherDistillation(temperature=4.0)
    # A batch of one, and a student whose predictions are uniform (every
    # centred row zero): a zero norm gives a zero, not NaN, gradient.
    z_t, z_s = logits(5, n=4)
    for teacher, student in ((z_t[:1], z_s[:1]), (z_t, np.zeros_like(z_s))):
        grad = gradient(_total_loss(term, teacher), keras.Variable(student))
        assert np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dist_mixed_precision_inputs_give_float32(dtype):
    z_t, z_s = logits(7)
    term = kd.losses.StrongerTeacherDistillation(temperature=4.0)
    value = term(
        [{"logits": ops.cast(z_t, dtype)}],
        {"logits": ops.cast(z_s, dtype)},
        teacher_weights=[1.0],
    )
    rounded = lambda z: ops.convert_to_numpy(ops.cast(ops.cast(z, dtype), "float32"))
    loss, _, _ = np_dist_official(rounded(z_s), rounded(z_t), 1.0, 1.0, 4.0)
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in value.values()}
    assert dtypes == {"float32"}
    total = float(ops.mean(value["inter"] + value["intra"]))
    np.testing.assert_allclose(total, loss, rtol=1e-3)


def test_dist_rejects_bad_arguments_and_sequence_logits():
    with pytest.raises(ValueError, match="temperature"):
        kd.losses.StrongerTeacherDistillation(temperature=0.0)
    with pytest.raises(ValueError, match="beta and gamma"):
        kd.losses.StrongerTeacherDistillation(gamma=-1.0)
    z = np.zeros((2, 3, 5), "float32")
    with pytest.raises(ValueError, match="compares whole samples"):
        kd.losses.StrongerTeacherDistillation()(
            [{"logits": z}], {"logits": z}, teacher_weights=[1.0]
        )


def _token_model(width, name):
    inputs = keras.Input((3,), dtype="int32")
    h = keras.layers.Embedding(7, width)(inputs)
    return keras.Model(inputs, keras.layers.Dense(7)(h), name=name)


def test_dist_refuses_sequence_logits_in_a_distiller():
    term = kd.losses.StrongerTeacherDistillation()
    with pytest.raises(ValueError, match="StrongerTeacherDistillation.*compares whole"):
        kd.Distiller(_token_model(8, "t"), _token_model(4, "s"), term)


def test_dist_config_round_trip():
    term = kd.losses.StrongerTeacherDistillation(2.0, 0.5, 3.0, name="dist")
    clone = kd.losses.StrongerTeacherDistillation.from_config(term.get_config())
    assert clone.get_config() == term.get_config()
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(term)
    )
    assert isinstance(restored, kd.losses.StrongerTeacherDistillation)
    assert (restored.beta, restored.gamma, restored.temperature) == (2.0, 0.5, 3.0)


def test_dist_gradients_reach_the_student_not_the_teacher(digits, trained_teacher):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(1)
    student = small_cnn(4, name="student")
    teacher_before = all_values(trained_teacher)
    student_before = trainable_values(student)
    distiller = kd.Distiller(
        trained_teacher,
        student,
        kd.losses.StrongerTeacherDistillation(temperature=4.0, name="dist"),
        distillation_loss_weights=[2.0],
        student_loss_weight=0.0,
        weighting="additive",
    )
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    history = fit_steps(distiller, x_train, y_train)
    # With a zero CE weight only DIST's gradient moves the student.
    assert_all_moved(student_before, trainable_values(student), "student variable")
    assert_unchanged(teacher_before, all_values(trained_teacher))
    np.testing.assert_allclose(
        history["total_loss"][0],
        2.0 * (history["dist_inter"][0] + history["dist_intra"][0]),
        rtol=1e-4,
    )
    assert history["dist_inter"][0] > 0 and history["dist_intra"][0] > 0
