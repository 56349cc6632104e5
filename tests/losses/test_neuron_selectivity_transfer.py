"""NST against a NumPy computation of the polynomial-kernel (d=2, c=0) MMD
between L2-normalised channel maps, per image, with PyTorch-style adaptive
pooling of the larger map."""

import keras
import numpy as np
import pytest
from helpers import gradient
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_adaptive_pool(f, size):
    """AdaptiveAvgPool2d on an NHWC map, with explicit bins."""
    b, h, w, c = f.shape
    out = np.zeros((b,) + tuple(size) + (c,))
    for i in range(size[0]):
        r0, r1 = (i * h) // size[0], -(-((i + 1) * h) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * w) // size[1], -(-((j + 1) * w) // size[1])
            out[:, i, j] = f[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def np_nst_pair(f_t, f_s):
    f_t, f_s = f_t.astype("float64"), f_s.astype("float64")
    size = tuple(min(a, b) for a, b in zip(f_t.shape[1:3], f_s.shape[1:3]))
    f_t, f_s = np_adaptive_pool(f_t, size), np_adaptive_pool(f_s, size)
    losses = []
    for t, s in zip(f_t, f_s):
        # Rows: channels; columns: spatial positions.
        t = t.reshape(-1, t.shape[-1]).T
        s = s.reshape(-1, s.shape[-1]).T
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        s = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
        k = lambda a, b: np.mean((a @ b.T) ** 2)
        losses.append(k(t, t) + k(s, s) - 2 * k(s, t))
    return np.array(losses)


def call(term, teachers, student, weights):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    return ops.convert_to_numpy(
        term([tensors(t) for t in teachers], tensors(student), teacher_weights=weights)
    )


def test_nst_matches_numpy_with_pooling_both_ways_and_two_teachers():
    rng = np.random.default_rng(0)
    t1 = {"a": rng.normal(size=(4, 8, 8, 6)), "b": rng.normal(size=(4, 4, 4, 8))}
    t2 = {
        "a": rng.normal(size=(4, 2, 2, 3)),
        "b": np.abs(rng.normal(size=(4, 3, 3, 2))),
    }
    s = {"x": rng.normal(size=(4, 4, 4, 5)), "y": np.abs(rng.normal(size=(4, 4, 4, 7)))}
    cast = lambda d: {k: v.astype("float32") for k, v in d.items()}
    t1, t2, s = cast(t1), cast(t2), cast(s)
    term = kd.losses.NeuronSelectivityTransfer(["a", "b"], ["x", "y"])
    got = call(term, [t1, t2], s, [0.25, 0.75])
    np_term = lambda t: np_nst_pair(t["a"], s["x"]) + np_nst_pair(t["b"], s["y"])
    expected = 0.25 * np_term(t1) + 0.75 * np_term(t2)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert term.pair_sizes == [[(4, 4), (4, 4)], [(2, 2), (3, 3)]]
    assert expected.min() > 1e-3


def test_nst_zero_for_the_same_maps():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    term = kd.losses.NeuronSelectivityTransfer("f", "f")
    np.testing.assert_allclose(
        call(term, [{"f": f}], {"f": 3.0 * f}, [1.0]), 0.0, atol=1e-6
    )


def test_nst_dead_channel_keeps_gradients_finite():
    """An all-zero (dead ReLU) channel normalises to 0 with a finite gradient."""
    rng = np.random.default_rng(3)
    f_t = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    f_s = np.abs(rng.normal(size=(2, 4, 4, 4))).astype("float32")
    f_s[..., 1] = 0.0
    term = kd.losses.NeuronSelectivityTransfer("f", "f")
    np.testing.assert_allclose(
        call(term, [{"f": f_t}], {"f": f_s}, [1.0]), np_nst_pair(f_t, f_s), rtol=1e-5
    )
    teacher = ops.convert_to_tensor(f_t)
    grad = gradient(
        lambda x: ops.sum(term([{"f": teacher}], {"f": x}, teacher_weights=[1.0])),
        keras.Variable(f_s),
    )
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_nst_float16_features_give_float32_loss():
    rng = np.random.default_rng(2)
    f_t, f_s = rng.normal(size=(2, 3, 4, 4, 6)).astype("float32")
    term = kd.losses.NeuronSelectivityTransfer("f", "f")
    got = term(
        [{"f": ops.cast(f_t, "float16")}],
        {"f": ops.cast(f_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda f: f.astype("float16").astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), np_nst_pair(rounded(f_t), rounded(f_s)), rtol=1e-4
    )


def test_nst_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        kd.losses.NeuronSelectivityTransfer(["a"], ["a", "b"])
    term = kd.losses.NeuronSelectivityTransfer("f", "g")
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"f": (None, 4, 4, 8)}], {"g": (None, 16)})
    with pytest.raises(ValueError, match="batch sizes"):
        term.build([{"f": (8, 4, 4, 8)}], {"g": (2, 4, 4, 8)})


def test_nst_config_round_trip():
    term = kd.losses.NeuronSelectivityTransfer(["a", "b"], ["c", "d"], name="nst")
    restored = kd.losses.NeuronSelectivityTransfer.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
