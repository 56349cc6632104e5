"""SP against a NumPy computation of the row-normalised batch Gram matrices
and the official ‖G_t − G_s‖²_F / b²."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_similarity(f):
    f = f.reshape(len(f), -1).astype("float64")
    g = np.array([[a @ b for b in f] for a in f])
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def np_sp(f_t, f_s):
    return ((np_similarity(f_t) - np_similarity(f_s)) ** 2).sum() / len(f_s) ** 2


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


def test_sp_matches_numpy_two_pairs_two_teachers_different_shapes():
    rng = np.random.default_rng(0)
    t1 = {"a": rng.normal(size=(6, 8, 8, 4)), "b": rng.normal(size=(6, 4, 4, 16))}
    t2 = {"a": rng.normal(size=(6, 2, 2, 3)), "b": rng.normal(size=(6, 10))}
    s = {"x": rng.normal(size=(6, 4, 4, 2)), "y": np.abs(rng.normal(size=(6, 2, 2, 5)))}
    cast = lambda d: {k: v.astype("float32") for k, v in d.items()}
    t1, t2, s = cast(t1), cast(t2), cast(s)
    term = kd.losses.SimilarityPreserving(["a", "b"], ["x", "y"])
    got = call(term, [t1, t2], s, [0.5, 0.5])
    np_term = lambda t: np_sp(t["a"], s["x"]) + np_sp(t["b"], s["y"])
    expected = 0.5 * np_term(t1) + 0.5 * np_term(t2)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert expected > 1e-3


def test_sp_invariant_to_feature_scale():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, 3, 3, 4)).astype("float32")
    term = kd.losses.SimilarityPreserving("f", "f")
    assert call(term, [{"f": f}], {"f": 7.0 * f}, [1.0]) < 1e-10


def test_sp_float16_features_give_float32_loss():
    rng = np.random.default_rng(2)
    f_t, f_s = rng.normal(size=(2, 4, 3, 3, 2)).astype("float32")
    term = kd.losses.SimilarityPreserving("f", "f")
    got = term(
        [{"f": ops.cast(f_t, "float16")}],
        {"f": ops.cast(f_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda f: f.astype("float16").astype("float32")
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(got)), np_sp(rounded(f_t), rounded(f_s)), rtol=1e-4
    )


def test_sp_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        kd.losses.SimilarityPreserving(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="same length"):
        kd.losses.SimilarityPreserving([], [])
    term = kd.losses.SimilarityPreserving("f", "g")
    with pytest.raises(ValueError, match="batch sizes"):
        term.build([{"f": (8, 4, 4, 3)}], {"g": (6, 4, 4, 3)})


def test_sp_config_round_trip():
    term = kd.losses.SimilarityPreserving(["a", "b"], ["c", "d"], name="sp")
    restored = kd.losses.SimilarityPreserving.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
