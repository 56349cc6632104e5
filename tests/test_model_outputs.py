"""What the Distiller reads from models: subclassed models returning logits,
and softmax heads (teachers read through log-probabilities, softmax students
refused by logit terms)."""

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import sparse_ce
from keras import ops

import keras_kd as kd
from keras_kd import model_outputs

pytestmark = pytest.mark.multi_backend

T = 4.0


def np_tempered_kd(p_t, z_s, t):
    """T² · KL with the teacher's target p^(1/T) / Σ p^(1/T)."""
    q = p_t ** (1.0 / t)
    q = q / q.sum(-1, keepdims=True)
    log_q = np.log(np.where(q > 0, q, 1.0))
    return (
        t
        * t
        * np.sum(np.where(q > 0, q * (log_q - numpy_log_softmax(z_s / t)), 0.0), -1)
    )


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 5, n)


def dense_model(name, head=None, scale=1.0, classes=5):
    """Functional 6 → 5 model; `head` picks how a softmax is applied."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    dense = keras.layers.Dense(
        classes,
        name="scores",
        activation="softmax" if head == "dense" else None,
        kernel_initializer=keras.initializers.RandomNormal(stddev=scale),
    )
    outputs = dense(hidden)
    if head == "softmax_layer":
        outputs = keras.layers.Softmax(name="probs")(outputs)
    elif head == "activation":
        outputs = keras.layers.Activation("softmax", name="probs")(outputs)
    return keras.Model(inputs, outputs, name=name)


def kd_value(distiller, x, y):
    """The Distiller's loss with the KD term alone (student weight 0)."""
    y_pred = distiller(x, training=True)
    return float(ops.convert_to_numpy(distiller.compute_loss(x, y, y_pred)))


class LogitsOnly(keras.Model):
    """A subclassed model whose call returns its logits tensor."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.scores = keras.layers.Dense(5)

    def call(self, x):
        return self.scores(self.hidden(x))


@pytest.mark.parametrize("role", ["student", "teacher", "both"])
def test_subclassed_model_returning_logits_works_with_logit_terms(role):
    x, y = batch(32)
    keras.utils.set_random_seed(0)
    teacher = LogitsOnly(name="t") if role != "student" else dense_model("t")
    student = LogitsOnly(name="s") if role != "teacher" else dense_model("s")
    for model in (teacher, student):
        model(x[:1])
    distiller = kd.Distiller(
        teacher, student, kd.losses.LogitsDistillation(T), student_loss_weight=0.0
    )
    z_t = ops.convert_to_numpy(teacher(x))
    z_s = ops.convert_to_numpy(student(x))
    p_t = np.exp(numpy_log_softmax(z_t))
    np.testing.assert_allclose(
        kd_value(distiller, x, y), np_tempered_kd(p_t, z_s, T).mean(), rtol=1e-4
    )
    distiller.compile(keras.optimizers.SGD(0.1))
    before = [ops.convert_to_numpy(w).copy() for w in student.weights]
    teacher_before = [ops.convert_to_numpy(w).copy() for w in teacher.weights]
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert any(
        not np.allclose(a, ops.convert_to_numpy(b))
        for a, b in zip(before, student.weights)
    )
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(b))


@pytest.mark.parametrize("head", ["dense", "softmax_layer", "activation"])
def test_softmax_teacher_is_read_through_log_probabilities(head):
    x, y = batch()
    keras.utils.set_random_seed(0)
    teacher = dense_model("t", head)
    student = dense_model("s")
    assert model_outputs.softmax_layer(teacher).name == (
        "scores" if head == "dense" else "probs"
    )
    with pytest.warns(UserWarning, match="ends in a softmax") as caught:
        distiller = kd.Distiller(
            teacher, student, kd.losses.LogitsDistillation(T), student_loss_weight=0.0
        )
    notices = [str(w.message) for w in caught if "ends in a softmax" in str(w.message)]
    assert len(notices) == 1 and "'t'" in notices[0]
    p_t = ops.convert_to_numpy(teacher(x)).astype("float64")
    z_s = ops.convert_to_numpy(student(x)).astype("float64")
    got = kd_value(distiller, x, y)
    np.testing.assert_allclose(got, np_tempered_kd(p_t, z_s, T).mean(), rtol=1e-4)
    # Reading the probabilities as logits (the silent bug) differs.
    wrong = np_tempered_kd(np.exp(numpy_log_softmax(p_t)), z_s, T).mean()
    assert abs(got - wrong) > 1e-3


def test_softmax_teacher_with_zero_probabilities_stays_finite():
    x, y = batch()
    keras.utils.set_random_seed(0)
    teacher = dense_model("t", "dense", scale=300.0)  # Saturated softmax.
    student = dense_model("s")
    p_t = ops.convert_to_numpy(teacher(x)).astype("float64")
    assert (p_t == 0).any()
    distiller = kd.Distiller(
        teacher, student, kd.losses.LogitsDistillation(T), student_loss_weight=0.0
    )
    logits = ops.convert_to_numpy(distiller(x, training=True)["teachers"][0]["logits"])
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(
        logits, np.log(np.maximum(p_t, np.finfo("float32").tiny)), atol=1e-4
    )
    got = kd_value(distiller, x, y)
    z_s = ops.convert_to_numpy(student(x)).astype("float64")
    clipped = np.maximum(p_t, np.finfo("float32").tiny)
    np.testing.assert_allclose(got, np_tempered_kd(clipped, z_s, T).mean(), rtol=1e-4)


def test_softmax_head_is_found_through_sequential_and_nested_models():
    inner = dense_model("inner", "dense")
    wrapped = keras.Sequential([keras.Input((6,)), inner], name="wrapped")
    assert model_outputs.softmax_layer(wrapped).name == "scores"
    sequential = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="softmax", name="head")]
    )
    assert model_outputs.softmax_layer(sequential).name == "head"
    assert model_outputs.softmax_layer(dense_model("plain")) is None
    relu_last = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu")]
    )
    assert model_outputs.softmax_layer(relu_last) is None


def test_softmax_student_is_refused_with_logit_terms_or_from_logits():
    teacher, student = dense_model("t"), dense_model("s", "activation")
    with pytest.raises(
        ValueError,
        match=r"'s' ends in a softmax \(layer "
        r"'probs'\).*activation=None",
    ):
        kd.Distiller(teacher, student, kd.losses.LogitsDistillation())
    features = kd.Distiller(
        teacher, student, kd.losses.FeatureDistillation("hidden", "hidden")
    )
    with pytest.raises(
        ValueError, match="'probs'.*from_logits=True.*from_logits=False"
    ):
        features.compile("adam", loss=sparse_ce())
    features.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy())
