"""PKT against a NumPy computation of the cosine-kernel conditional
probabilities and the official mean over the b² entries."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_conditional(f, eps=1e-7):
    f = f.reshape(len(f), -1).astype("float64")
    p = np.zeros((len(f), len(f)))
    for i in range(len(f)):
        for j in range(len(f)):
            u = f[i] / (np.linalg.norm(f[i]) + eps)
            v = f[j] / (np.linalg.norm(f[j]) + eps)
            p[i, j] = (u @ v + 1.0) / 2.0
    return p / p.sum(axis=1, keepdims=True)


def np_pkt(f_t, f_s, eps=1e-7):
    p_t, p_s = np_conditional(f_t, eps), np_conditional(f_s, eps)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


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


def test_pkt_matches_numpy_with_two_teachers_and_a_zero_row():
    rng = np.random.default_rng(0)
    f_t1 = rng.normal(size=(8, 16)).astype("float32")
    f_t2 = np.abs(rng.normal(size=(8, 2, 2, 3))).astype("float32")  # flattened
    f_s = rng.normal(size=(8, 6)).astype("float32")
    f_s[3] = 0.0  # an all-zero feature: cosine 0 with every row
    term = kd.losses.ProbabilisticKnowledgeTransfer("f", "g")
    got = call(term, [{"f": f_t1}, {"f": f_t2}], {"g": f_s}, [0.6, 0.4])
    expected = 0.6 * np_pkt(f_t1, f_s) + 0.4 * np_pkt(f_t2, f_s)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert expected > 1e-3


def test_pkt_rows_are_distributions_and_same_features_give_zero():
    from keras_kd.losses.probabilistic_transfer import cosine_conditional_probabilities

    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, 4)).astype("float32")
    p = ops.convert_to_numpy(cosine_conditional_probabilities(ops.convert_to_tensor(f)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, np_conditional(f), rtol=1e-5)
    term = kd.losses.ProbabilisticKnowledgeTransfer("f", "f")
    assert abs(call(term, [{"f": f}], {"f": 2.0 * f}, [1.0])) < 1e-6


def test_pkt_float16_features_give_float32_loss():
    rng = np.random.default_rng(2)
    f_t, f_s = rng.normal(size=(2, 6, 8)).astype("float32")
    term = kd.losses.ProbabilisticKnowledgeTransfer("f", "f")
    got = term(
        [{"f": ops.cast(f_t, "float16")}],
        {"f": ops.cast(f_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda f: f.astype("float16").astype("float32")
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)), np_pkt(rounded(f_t), rounded(f_s)), rtol=1e-4
    )


def test_pkt_rejects_bad_input():
    with pytest.raises(ValueError, match="eps"):
        kd.losses.ProbabilisticKnowledgeTransfer(eps=-1.0)
    term = kd.losses.ProbabilisticKnowledgeTransfer("f", "g")
    with pytest.raises(ValueError, match="batch sizes"):
        term([{"f": ops.ones((4, 3))}], {"g": ops.ones((5, 3))}, teacher_weights=[1.0])


def test_pkt_config_round_trip():
    term = kd.losses.ProbabilisticKnowledgeTransfer("a", "b", eps=1e-6, name="pkt")
    restored = kd.losses.ProbabilisticKnowledgeTransfer.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
