"""Core terms against independent NumPy computations of their formulas."""

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_kd(z_t_list, weights, z_s, t):
    """T² · KL(Σ_m w_m softmax(z_t^m/T) ‖ softmax(z_s/T)) per sample."""
    p_t = sum(w * numpy_softmax(z / t) for w, z in zip(weights, z_t_list))
    return t * t * np.sum(p_t * (np.log(p_t) - numpy_log_softmax(z_s / t)), -1)


def run(term, teacher_outputs, student_outputs, weights=None, **kwargs):
    weights = weights or [1.0 / len(teacher_outputs)] * len(teacher_outputs)
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    value = term(
        [tensors(t) for t in teacher_outputs],
        tensors(student_outputs),
        teacher_weights=weights,
        **kwargs,
    )
    return ops.convert_to_numpy(value)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logits_distillation_matches_hinton_formula(temperature):
    rng = np.random.default_rng(0)
    z_t, z_s = rng.normal(size=(2, 16, 10)).astype("float32") * 3
    term = kd.losses.LogitsDistillation(temperature=temperature)
    got = run(term, [{"logits": z_t}], {"logits": z_s})
    np.testing.assert_allclose(got, np_kd([z_t], [1.0], z_s, temperature), rtol=1e-4)


def test_logits_distillation_default_differs_from_keras_default():
    """methods.md §0: Keras' default computes another number; ours the formula."""
    rng = np.random.default_rng(1)
    z_t, z_s = rng.normal(size=(2, 32, 100)).astype("float32") * 4
    ours = run(kd.losses.LogitsDistillation(), [{"logits": z_t}], {"logits": z_s})
    expected = np_kd([z_t], [1.0], z_s, 4.0).mean()
    np.testing.assert_allclose(ours.mean(), expected, rtol=1e-4)
    keras_value = float(
        keras.distillation.LogitsDistillation(temperature=4.0).compute_loss(
            ops.convert_to_tensor(z_t), ops.convert_to_tensor(z_s)
        )
    )
    assert abs(keras_value - expected) > 0.1 * expected


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_logits_distillation_mixed_precision_inputs_in_float32(dtype):
    rng = np.random.default_rng(2)
    z_t, z_s = rng.normal(size=(2, 8, 10)).astype("float32") * 5
    term = kd.losses.LogitsDistillation(temperature=4.0)
    z_s_low = ops.cast(z_s, dtype)
    got = term(
        [{"logits": ops.convert_to_tensor(z_t)}],
        {"logits": z_s_low},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    z_s_rounded = ops.convert_to_numpy(ops.cast(z_s_low, "float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), np_kd([z_t], [1.0], z_s_rounded, 4.0), rtol=1e-4
    )


def test_logits_distillation_multi_teacher_mean_of_probabilities():
    rng = np.random.default_rng(3)
    z_t1, z_t2, z_s = rng.normal(size=(3, 8, 5)).astype("float32") * 2
    term = kd.losses.LogitsDistillation(temperature=2.0)
    got = run(term, [{"logits": z_t1}, {"logits": z_t2}], {"logits": z_s}, [0.25, 0.75])
    expected = np_kd([z_t1, z_t2], [0.25, 0.75], z_s, 2.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_logits_distillation_uses_label_teacher_probabilities_untempered():
    rng = np.random.default_rng(4)
    p = numpy_softmax(rng.normal(size=(8, 6))).astype("float32")
    p[0] = [1, 0, 0, 0, 0, 0]  # A zero probability contributes 0 · log 0 = 0.
    z_s = rng.normal(size=(8, 6)).astype("float32")
    got = run(
        kd.losses.LogitsDistillation(temperature=5.0),
        [{"probabilities": p}],
        {"logits": z_s},
    )
    log_p = np.log(np.where(p > 0, p, 1.0))
    expected = 25.0 * np.sum(
        np.where(p > 0, p * (log_p - numpy_log_softmax(z_s / 5.0)), 0), -1
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("loss", ["mse", "mae", "cosine"])
def test_feature_distillation_matches_numpy(loss):
    rng = np.random.default_rng(5)
    f_t, f_s = rng.normal(size=(2, 4, 3, 3, 2)).astype("float32")
    term = kd.losses.FeatureDistillation("a", "b", loss=loss)
    got = run(term, [{"a": f_t}], {"b": f_s})
    d = (f_s - f_t).reshape(4, -1)
    if loss == "mse":
        expected = (d**2).mean(-1)
    elif loss == "mae":
        expected = np.abs(d).mean(-1)
    else:
        a, b = f_s.reshape(4, -1), f_t.reshape(4, -1)
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        expected = 1 - cos
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_feature_distillation_rejects_different_shapes():
    term = kd.losses.FeatureDistillation("a", "b")
    with pytest.raises(ValueError, match="FeatureAlignment"):
        term.build([{"a": (None, 4, 4, 8)}], {"b": (None, 4, 4, 4)})


def bn_inference(x, bn):
    gamma, beta, mean, var = [ops.convert_to_numpy(w) for w in bn.weights]
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_feature_alignment_maps_match_numpy(kind):
    """Student 8×8×3 → teacher 4×4×5: 2×2 average pool, then the aligner."""
    rng = np.random.default_rng(6)
    f_s = rng.normal(size=(3, 8, 8, 3)).astype("float32")
    f_t = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    term = kd.losses.FeatureAlignment("t", "s", aligner=kind)
    term.build([{"t": (None, 4, 4, 5)}], {"s": (None, 8, 8, 3)})
    got = run(term, [{"t": f_t}], {"s": f_s}, training=False)

    pooled = f_s.reshape(3, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    layers = term.aligners[0].layers[1:]  # After the pooling layer.
    h = pooled @ ops.convert_to_numpy(layers[0].kernel)[0, 0]
    h = bn_inference(h, layers[1])
    if kind == "nonlinear":
        h = np.maximum(h, 0) @ ops.convert_to_numpy(layers[3].kernel)[0, 0]
    expected = ((h - f_t) ** 2).reshape(3, -1).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_feature_alignment_vectors_and_multi_teacher():
    rng = np.random.default_rng(7)
    f_s = rng.normal(size=(4, 6)).astype("float32")
    f_t1 = rng.normal(size=(4, 3)).astype("float32")
    f_t2 = rng.normal(size=(4, 5)).astype("float32")
    term = kd.losses.FeatureAlignment("t", "s", aligner="linear")
    term.build([{"t": (None, 3)}, {"t": (None, 5)}], {"s": (None, 6)})
    got = run(term, [{"t": f_t1}, {"t": f_t2}], {"s": f_s}, [0.5, 0.5], training=False)
    expected = 0
    for aligner, f_t in zip(term.aligners, [f_t1, f_t2]):
        h = bn_inference(
            f_s @ ops.convert_to_numpy(aligner.layers[0].kernel), aligner.layers[1]
        )
        expected = expected + 0.5 * ((h - f_t) ** 2).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_feature_alignment_resizes_non_integer_factor_bilinearly():
    term = kd.losses.FeatureAlignment("t", "s")
    term.build([{"t": (None, 3, 3, 4)}], {"s": (None, 4, 4, 2)})
    assert isinstance(term.aligners[0].layers[0], keras.layers.Resizing)


def test_feature_alignment_rejects_map_vs_vector():
    term = kd.losses.FeatureAlignment("t", "s")
    with pytest.raises(ValueError, match="both must be feature maps"):
        term.build([{"t": (None, 16)}], {"s": (None, 4, 4, 2)})


def test_terms_round_trip_through_config():
    for term in [
        kd.losses.LogitsDistillation(temperature=3.0),
        kd.losses.FeatureDistillation("a", "b", loss="cosine"),
        kd.losses.FeatureAlignment("a", "b", aligner="linear"),
    ]:
        restored = type(term).from_config(term.get_config())
        assert restored.get_config() == term.get_config()


def np_conv(x, kernel, bias, stride=1, pad=0):
    """Cross-correlation NHWC × (kh, kw, C_in, C_out), symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((len(x), oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, i, j] = np.einsum("bhwc,hwcd->bd", patch, kernel)
    return out + bias


def np_conv_transpose(x, kernel, bias, stride=2, pad=1):
    """PyTorch ConvTranspose2d(k, stride, padding) on NHWC, Keras kernel
    layout (kh, kw, C_out, C_in): scatter every input pixel, then crop."""
    kh, kw = kernel.shape[:2]
    b, h, w, _ = x.shape
    full = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, kernel.shape[2]))
    for i in range(h):
        for j in range(w):
            full[:, i * stride : i * stride + kh, j * stride : j * stride + kw] += (
                np.einsum("bc,hwdc->bhwd", x[:, i, j], kernel)
            )
    return full[:, pad : full.shape[1] - pad, pad : full.shape[2] - pad] + bias


@pytest.mark.multi_backend
@pytest.mark.parametrize(
    "s_size, t_size, case",
    [(8, 4, "stride2"), (4, 8, "transpose"), (6, 4, "valid"), (4, 4, "valid")],
)
def test_hint_regressor_is_conv_bn_relu_as_convreg(s_size, t_size, case):
    """FitNets' regressor (RepDistiller ConvReg): conv chosen by the sizes,
    then BN and ReLU."""
    rng = np.random.default_rng(8)
    f_s = rng.normal(size=(3, s_size, s_size, 3)).astype("float32")
    f_t = rng.normal(size=(3, t_size, t_size, 5)).astype("float32")
    term = kd.losses.FeatureAlignment("t", "s", aligner="hint")
    term.build([{"t": f_t.shape}], {"s": f_s.shape})
    reg = term.aligners[0]
    conv, bn, relu = [
        layer
        for layer in reg.layers
        if not isinstance(layer, keras.layers.ZeroPadding2D)
    ]
    for w in bn.weights:  # Non-trivial batch-norm statistics.
        w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
    kernel, bias = (ops.convert_to_numpy(w).astype("float64") for w in conv.weights)
    assert isinstance(relu, keras.layers.ReLU) and bn.epsilon == 1e-5
    if case == "stride2":
        assert kernel.shape[:2] == (3, 3)
        h = np_conv(f_s, kernel, bias, stride=2, pad=1)
    elif case == "transpose":
        assert isinstance(conv, keras.layers.Conv2DTranspose)
        h = np_conv_transpose(f_s, kernel, bias)
    else:
        assert kernel.shape[:2] == (1 + s_size - t_size,) * 2
        h = np_conv(f_s, kernel, bias)
    h = np.maximum(bn_inference(h, bn), 0)
    got = run(term, [{"t": f_t}], {"s": f_s}, training=False)
    expected = ((h - f_t) ** 2).reshape(3, -1).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_hint_regressor_rejects_vectors_and_smaller_maps():
    term = kd.losses.FeatureAlignment("t", "s", aligner="hint")
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"t": (None, 16)}], {"s": (None, 16)})
    with pytest.raises(ValueError, match="half, twice"):
        term.build([{"t": (None, 7, 7, 4)}], {"s": (None, 5, 5, 4)})
    with pytest.raises(ValueError, match="aligner must be one of"):
        kd.losses.FeatureAlignment("t", "s", aligner="convreg")
