"""RKD against a NumPy computation of the paper's relations and the official
reductions (distances over the mean of non-zero pairs, smooth-L1 means)."""

import keras
import numpy as np
import pytest
from helpers import gradient
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_distances(e, squared=False, eps=1e-12):
    """Pairwise distances from explicit differences, clamped, diagonal 0."""
    e = e.reshape(len(e), -1).astype("float64")
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    d = np.maximum(d, eps)
    d = d if squared else np.sqrt(d)
    np.fill_diagonal(d, 0.0)
    return d / d[d > 0].mean()


def np_angles(e):
    """cos ∠(e_j, e_i, e_k) for every (i, j, k), one triple at a time."""
    e = e.reshape(len(e), -1).astype("float64")
    n = len(e)
    out = np.zeros((n, n, n))
    for i in range(n):
        for j in range(n):
            for k in range(n):
                u, v = e[j] - e[i], e[k] - e[i]
                u = u / max(np.linalg.norm(u), 1e-12)
                v = v / max(np.linalg.norm(v), 1e-12)
                out[i, j, k] = u @ v
    return out


def np_huber(x, y):
    a = np.abs(x - y)
    return np.where(a < 1.0, 0.5 * a**2, a - 0.5).mean()


def np_rkd(e_t, e_s, squared=False):
    return (
        np_huber(np_distances(e_s, squared), np_distances(e_t, squared)),
        np_huber(np_angles(e_s), np_angles(e_t)),
    )


def call(term, teachers, student, weights):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    out = term(
        [tensors(t) for t in teachers], tensors(student), teacher_weights=weights
    )
    return {k: float(ops.convert_to_numpy(v)) for k, v in out.items()}


@pytest.mark.parametrize("squared", [False, True])
def test_rkd_matches_numpy_with_two_teachers(squared):
    rng = np.random.default_rng(0)
    e_t1 = rng.normal(size=(7, 12)).astype("float32")
    e_t2 = rng.normal(size=(7, 3, 2, 2)).astype("float32") * 3  # flattened
    e_s = rng.normal(size=(7, 5)).astype("float32")
    term = kd.losses.RelationalKnowledgeDistillation(
        "f", "g", distance_weight=25.0, angle_weight=50.0, squared=squared
    )
    got = call(term, [{"f": e_t1}, {"f": e_t2}], {"g": e_s}, [0.3, 0.7])
    (d1, a1), (d2, a2) = np_rkd(e_t1, e_s, squared), np_rkd(e_t2, e_s, squared)
    expected = {
        "distance": 25 * (0.3 * d1 + 0.7 * d2),
        "angle": 50 * (0.3 * a1 + 0.7 * a2),
    }
    for part in ("distance", "angle"):
        np.testing.assert_allclose(got[part], expected[part], rtol=2e-5)
    assert expected["distance"] > 0.1 and expected["angle"] > 0.1


def test_rkd_huber_branch_above_one():
    """Distances far from the teacher's take the linear branch of smooth-L1."""
    rng = np.random.default_rng(1)
    e_t = rng.normal(size=(5, 4)).astype("float32")
    e_s = e_t.copy()
    e_s[0] += 40.0  # one outlier: normalised distances differ by > 1
    term = kd.losses.RelationalKnowledgeDistillation("f", "f")
    got = call(term, [{"f": e_t}], {"f": e_s}, [1.0])
    d, a = np_rkd(e_t, e_s)
    assert np.abs(np_distances(e_s) - np_distances(e_t)).max() > 1.0
    np.testing.assert_allclose(got["distance"], 25 * d, rtol=2e-5)
    np.testing.assert_allclose(got["angle"], 50 * a, rtol=2e-5)


def test_rkd_zero_for_a_scaled_copy_and_finite_gradients_for_equal_rows():
    """Distances are scale-free (normalised) and angles too; equal rows keep
    the gradient finite (the eps clamp)."""
    rng = np.random.default_rng(2)
    e_t = rng.normal(size=(6, 8)).astype("float32")
    term = kd.losses.RelationalKnowledgeDistillation("f", "f")
    got = call(term, [{"f": e_t}], {"f": 3.0 * e_t}, [1.0])
    assert got["distance"] < 1e-9 and got["angle"] < 1e-9
    e_s = rng.normal(size=(6, 8)).astype("float32")
    e_s[1] = e_s[0]
    student = keras.Variable(e_s)
    teacher = ops.convert_to_tensor(e_t)

    def loss_fn(x):
        out = term([{"f": teacher}], {"f": x}, teacher_weights=[1.0])
        return out["distance"] + out["angle"]

    grad = gradient(loss_fn, student)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_rkd_float16_features_give_float32_loss():
    rng = np.random.default_rng(3)
    e_t, e_s = rng.normal(size=(2, 6, 8)).astype("float32")
    term = kd.losses.RelationalKnowledgeDistillation("f", "f")
    out = term(
        [{"f": ops.cast(e_t, "float16")}],
        {"f": ops.cast(e_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(out["angle"].dtype) == "float32"
    rounded = lambda e: e.astype("float16").astype("float32")
    d, a = np_rkd(rounded(e_t), rounded(e_s))
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(out["distance"])), 25 * d, rtol=1e-4
    )


def test_rkd_rejects_bad_input():
    with pytest.raises(ValueError, match="distance_weight"):
        kd.losses.RelationalKnowledgeDistillation(distance_weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        kd.losses.RelationalKnowledgeDistillation(eps=0.0)
    term = kd.losses.RelationalKnowledgeDistillation("f", "g")
    with pytest.raises(ValueError, match="batch sizes"):
        term.build([{"f": (8, 16)}], {"g": (4, 16)})


def test_rkd_config_round_trip():
    term = kd.losses.RelationalKnowledgeDistillation(
        "a", "b", distance_weight=1.0, angle_weight=2.0, squared=True, name="rkd"
    )
    restored = kd.losses.RelationalKnowledgeDistillation.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
    assert restored.component_names == ("distance", "angle")
