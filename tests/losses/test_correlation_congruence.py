"""CC against NumPy: the paper's P-order Taylor expansion of the Gaussian RBF
correlation (MSE over the b² entries), and RepDistiller's formulation on
linear embeddings; the embedding heads train, the teacher does not."""

import math

import keras
import numpy as np
import pytest
from helpers import small_cnn
from helpers import sparse_ce
from keras import ops

import keras_kd as kd
from keras_kd.losses.correlation_congruence import taylor_rbf_correlation

pytestmark = pytest.mark.multi_backend


def np_taylor_correlation(e, gamma=0.4, order=2):
    e = e.reshape(len(e), -1).astype("float64")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    c = np.zeros((len(e), len(e)))
    for i in range(len(e)):
        for j in range(len(e)):
            s = e[i] @ e[j]
            c[i, j] = sum(
                math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s**p
                for p in range(order + 1)
            )
    return c


def np_cc_gaussian(e_t, e_s, gamma=0.4, order=2):
    diff = np_taylor_correlation(e_s, gamma, order) - np_taylor_correlation(
        e_t, gamma, order
    )
    return np.mean(diff**2)


def np_cc_repdistiller(e_t, e_s):
    delta = np.abs(e_s.astype("float64") - e_t)
    return np.mean([delta[i] @ delta[i + 1] for i in range(len(delta) - 1)])


def call(term, teachers, student, weights):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    return float(
        ops.convert_to_numpy(
            term(
                [tensors(t) for t in teachers],
                tensors(student),
                teacher_weights=weights,
            )
        )
    )


@pytest.mark.parametrize("gamma, order", [(0.4, 2), (1.0, 3)])
def test_cc_gaussian_matches_numpy_two_teachers(gamma, order):
    rng = np.random.default_rng(0)
    e_t1 = rng.normal(size=(9, 16)).astype("float32")
    e_t2 = np.abs(rng.normal(size=(9, 2, 2, 2))).astype("float32")
    e_s = rng.normal(size=(9, 5)).astype("float32")
    term = kd.losses.CorrelationCongruence("f", "g", gamma=gamma, order=order)
    got = call(term, [{"f": e_t1}, {"f": e_t2}], {"g": e_s}, [0.5, 0.5])
    expected = 0.5 * np_cc_gaussian(e_t1, e_s, gamma, order) + 0.5 * np_cc_gaussian(
        e_t2, e_s, gamma, order
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert expected > 1e-4


def test_taylor_expansion_converges_to_the_gaussian_rbf():
    """The paper's kernel: exp(−γ‖x̂ − ŷ‖²) on unit vectors, the limit in P."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=(6, 4)).astype("float32")
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    exact = np.exp(-0.4 * ((unit[:, None] - unit[None]) ** 2).sum(-1))
    got = ops.convert_to_numpy(
        taylor_rbf_correlation(ops.convert_to_tensor(e), 0.4, 20)
    )
    np.testing.assert_allclose(got, exact, rtol=1e-5)


def test_cc_repdistiller_on_embeddings_matches_numpy():
    rng = np.random.default_rng(2)
    f_t = rng.normal(size=(7, 12)).astype("float32")
    f_s = rng.normal(size=(7, 2, 2, 2)).astype("float32")
    term = kd.losses.CorrelationCongruence(
        "f", "g", formulation="repdistiller", embedding_dim=4
    )
    got = call(term, [{"f": f_t}], {"g": f_s}, [1.0])
    w_s, b_s = [ops.convert_to_numpy(v) for v in term.student_embeddings[0].weights]
    w_t, b_t = [ops.convert_to_numpy(v) for v in term.teacher_embeddings[0].weights]
    e_s = f_s.reshape(7, -1).astype("float64") @ w_s + b_s
    e_t = f_t.astype("float64") @ w_t + b_t
    np.testing.assert_allclose(got, np_cc_repdistiller(e_t, e_s), rtol=1e-5)
    # nn.Linear's default initialisation: U(±1/√fan_in), bias included.
    assert np.abs(w_t).max() <= 1 / math.sqrt(12) and np.abs(b_s).max() > 0


def test_cc_repdistiller_without_embedding_matches_numpy():
    rng = np.random.default_rng(3)
    e_t, e_s = rng.normal(size=(2, 6, 5)).astype("float32")
    term = kd.losses.CorrelationCongruence("f", "f", formulation="repdistiller")
    np.testing.assert_allclose(
        call(term, [{"f": e_t}], {"f": e_s}, [1.0]),
        np_cc_repdistiller(e_t, e_s),
        rtol=1e-5,
    )


def test_cc_embeddings_train_and_teacher_does_not():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    keras.utils.set_random_seed(0)
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    cc = kd.losses.CorrelationCongruence(
        "features", "features", formulation="repdistiller", embedding_dim=6
    )
    distiller = kd.Distiller(
        teacher,
        student,
        cc,
        distillation_loss_weights=[1.0],
        weighting="additive",
        student_loss_weight=1.0,
    )
    heads = cc.student_embeddings + cc.teacher_embeddings
    assert all(v.trainable for h in heads for v in h.weights)
    before = [ops.convert_to_numpy(v).copy() for h in heads for v in h.weights]
    distiller.compile(keras.optimizers.Adam(1e-2), sparse_ce())
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["correlation_congruence"]).all()
    after = [ops.convert_to_numpy(v) for h in heads for v in h.weights]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    for b, a in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_cc_rejects_bad_input():
    with pytest.raises(ValueError, match="formulation"):
        kd.losses.CorrelationCongruence(formulation="bilinear")
    with pytest.raises(ValueError, match="embedding_dim"):
        kd.losses.CorrelationCongruence(embedding_dim=0)
    with pytest.raises(ValueError, match="gamma"):
        kd.losses.CorrelationCongruence(gamma=0.0)
    term = kd.losses.CorrelationCongruence("f", "g", formulation="repdistiller")
    with pytest.raises(ValueError, match="embedding_dim"):
        term.build([{"f": (None, 16)}], {"g": (None, 8)})
    term = kd.losses.CorrelationCongruence("f", "g")
    with pytest.raises(ValueError, match="batch sizes"):
        term.build([{"f": (4, 16)}], {"g": (3, 8)})


def test_cc_config_round_trip():
    term = kd.losses.CorrelationCongruence(
        "a",
        "b",
        formulation="repdistiller",
        embedding_dim=16,
        gamma=0.5,
        order=3,
        name="cc",
    )
    restored = kd.losses.CorrelationCongruence.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
