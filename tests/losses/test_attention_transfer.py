"""Attention transfer against NumPy."""

import keras
import numpy as np
import pytest
from helpers import np_attention
from helpers import sparse_ce
from helpers import tiny_resnet
from keras import ops

import keras_kd as kd
from keras_kd.losses.attention_transfer import spatial_attention


def test_attention_pools_the_feature_map_before_squaring():
    """Pooling `F` then squaring differs from pooling `mean_c(F²)`."""
    f = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    got = ops.convert_to_numpy(spatial_attention(ops.convert_to_tensor(f), (4, 4)))
    energy_first = np_attention(f, (4, 4), pool="energy")
    assert np.abs(got - energy_first).max() > 1e-2
    np.testing.assert_allclose(got, np_attention(f, (4, 4)), rtol=1e-5, atol=1e-7)
    afd = spatial_attention(ops.convert_to_tensor(f), (4, 4), pool="energy")
    np.testing.assert_allclose(
        ops.convert_to_numpy(afd), energy_first, rtol=1e-5, atol=1e-7
    )


def run(term, teacher_outputs, student_outputs, weights):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    value = term(
        [tensors(t) for t in teacher_outputs],
        tensors(student_outputs),
        teacher_weights=weights,
    )
    return ops.convert_to_numpy(value)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((3, 4, 4, 5), None),
        ((3, 8, 8, 2), (4, 4)),
        ((3, 5, 7, 3), (3, 2)),
        ((3, 2, 2, 4), (4, 4)),
    ],
)
def test_spatial_attention_matches_numpy(shape, size):
    """Integer factors, uneven bins and upsampling all follow PyTorch."""
    f = np.random.default_rng(0).normal(size=shape).astype("float32")
    got = ops.convert_to_numpy(spatial_attention(ops.convert_to_tensor(f), size))
    np.testing.assert_allclose(got, np_attention(f, size), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_attention_transfer_matches_numpy_with_pooling_and_two_teachers():
    rng = np.random.default_rng(1)
    t1 = {"a": rng.normal(size=(4, 8, 8, 6)), "b": rng.normal(size=(4, 4, 4, 8))}
    t2 = {"a": rng.normal(size=(4, 4, 4, 3)), "b": rng.normal(size=(4, 2, 2, 8))}
    s = {"x": rng.normal(size=(4, 4, 4, 2)), "y": rng.normal(size=(4, 4, 4, 5))}
    cast = lambda d: {k: v.astype("float32") for k, v in d.items()}
    t1, t2, s = cast(t1), cast(t2), cast(s)
    term = kd.losses.AttentionTransfer(["a", "b"], ["x", "y"])
    got = run(term, [t1, t2], s, [0.25, 0.75])

    def np_at(t):
        total = 0.0
        for tn, sn in [("a", "x"), ("b", "y")]:
            size = tuple(min(p, q) for p, q in zip(t[tn].shape[1:3], s[sn].shape[1:3]))
            diff = np_attention(s[sn], size) - np_attention(t[tn], size)
            total = total + (diff**2).mean(-1)
        return total

    expected = 0.25 * np_at(t1) + 0.75 * np_at(t2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert term.pair_sizes == [[(4, 4), (4, 4)], [(4, 4), (2, 2)]]


def test_attention_transfer_float16_features_give_float32_loss():
    rng = np.random.default_rng(2)
    f_t, f_s = rng.normal(size=(2, 3, 4, 4, 8)).astype("float32") * 30
    term = kd.losses.AttentionTransfer("a", "b")
    got = term(
        [{"a": ops.cast(f_t, "float16")}],
        {"b": ops.cast(f_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda f: f.astype("float16").astype("float32")
    diff = np_attention(rounded(f_s)) - np_attention(rounded(f_t))
    np.testing.assert_allclose(ops.convert_to_numpy(got), (diff**2).mean(-1), rtol=1e-4)


def test_attention_transfer_rejects_bad_layer_lists():
    with pytest.raises(ValueError, match="same length"):
        kd.losses.AttentionTransfer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="same length"):
        kd.losses.AttentionTransfer([], [])
    term = kd.losses.AttentionTransfer("a", "b")
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"a": (None, 4, 4, 8)}], {"b": (None, 16)})


def test_attention_transfer_config_round_trip():
    term = kd.losses.AttentionTransfer(["a", "b"], ["c", "d"], name="at")
    restored = kd.losses.AttentionTransfer.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
    assert restored.student_layer_names == ["c", "d"]


def test_attention_transfer_trains_on_digits(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher, student = tiny_resnet(8, 2, "teacher"), tiny_resnet(4, 1, "student")
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    at = kd.losses.AttentionTransfer(["block1_2", "block2_2"], ["block1_1", "block2_1"])
    distiller = kd.Distiller(
        teacher,
        student,
        at,
        distillation_loss_weights=[1000.0],
        weighting="additive",
        student_loss_weight=1.0,
    )
    distiller.compile(keras.optimizers.Adam(1e-3), sparse_ce())
    history = distiller.fit(
        x_train[:256], y_train[:256], epochs=1, batch_size=128, verbose=0
    )
    assert np.isfinite(history.history["attention_transfer"]).all()
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
