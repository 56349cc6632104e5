"""ReviewKD against a NumPy computation of mdistiller's ReviewKD.py
(ABF fusion, hcl_loss)."""

import keras
import numpy as np
import pytest
from helpers import small_cnn
from helpers import sparse_ce

import keras_kd as kd
from keras_kd.losses.review_distillation import hierarchical_context_loss
from keras_kd.presets import reviewkd as reviewkd_presets


def np_adaptive_avg_pool(x, size):
    """NHWC adaptive average pooling as in PyTorch (possibly overlapping)."""
    n, h, w, c = x.shape
    out = np.zeros((n, size, size, c))
    for i in range(size):
        h0, h1 = int(np.floor(i * h / size)), int(np.ceil((i + 1) * h / size))
        for j in range(size):
            w0, w1 = int(np.floor(j * w / size)), int(np.ceil((j + 1) * w / size))
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def np_hcl(fs, ft):
    """hcl_loss for one pair, batch-mean as in mdistiller."""
    loss, cnt, tot = ((fs - ft) ** 2).mean(), 1.0, 1.0
    for level in [4, 2, 1]:
        if level >= fs.shape[1]:
            continue
        cnt /= 2.0
        loss += (
            (np_adaptive_avg_pool(fs, level) - np_adaptive_avg_pool(ft, level)) ** 2
        ).mean() * cnt
        tot += cnt
    return loss / tot


def np_nearest(x, size):
    rows = np.floor(np.arange(size[0]) * x.shape[1] / size[0]).astype(int)
    cols = np.floor(np.arange(size[1]) * x.shape[2] / size[1]).astype(int)
    return x[:, rows][:, :, cols]


def np_conv(x, kernel, bias=None):
    """Stride-1 'same' convolution, NHWC, kernel (k, k, C_in, C_out)."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for di in range(k):
        for dj in range(k):
            patch = xp[:, di : di + x.shape[1], dj : dj + x.shape[2]]
            out += patch @ kernel[di, dj]
    return out if bias is None else out + bias


def np_bn(x, gamma, beta, mean, var, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_abf(fusion, x, residual, out_size):
    """mdistiller ABF.forward (BN in inference mode) with `fusion`'s weights."""

    def value(v):
        return keras.ops.convert_to_numpy(v).astype("float64")

    def bn(z, layer):
        return np_bn(
            z,
            value(layer.gamma),
            value(layer.beta),
            value(layer.moving_mean),
            value(layer.moving_variance),
        )

    x = bn(np_conv(x, value(fusion.reduce.kernel)), fusion.reduce_bn)
    if residual is not None:
        residual = np_nearest(residual, x.shape[1:3])
        a = np_conv(
            np.concatenate([x, residual], -1),
            value(fusion.attention.kernel),
            value(fusion.attention.bias),
        )
        a = 1.0 / (1.0 + np.exp(-a))
        x = x * a[..., :1] + residual * a[..., 1:]
    x = np_nearest(x, out_size)
    return bn(np_conv(x, value(fusion.output_conv.kernel)), fusion.output_bn), x


@pytest.mark.multi_backend
@pytest.mark.parametrize("height", [8, 7, 4, 2, 1])
def test_hcl_matches_numpy(height):
    rng = np.random.default_rng(height)
    fs = rng.normal(size=(3, height, height, 5)).astype("float32")
    ft = rng.normal(size=(3, height, height, 5)).astype("float32")
    ours = keras.ops.convert_to_numpy(hierarchical_context_loss(fs, ft))
    assert ours.shape == (3,)
    diff = abs(ours.mean() - np_hcl(fs.astype("float64"), ft.astype("float64")))
    print(f"HCL h={height} abs diff:", diff)
    assert diff < 1e-6


def built_term(**kwargs):
    term = kd.losses.ReviewDistillation(
        ["t1", "t2", "t3"], ["s1", "s2", "s3"], **kwargs
    )
    term.build(
        [{"t1": (None, 8, 8, 4), "t2": (None, 4, 4, 6), "t3": (None, 7)}],
        {"s1": (None, 8, 8, 3), "s2": (None, 2, 2, 5), "s3": (None, 6)},
    )
    return term


@pytest.mark.multi_backend
def test_fusion_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    term = built_term()
    for v in term.weights:  # Random BN statistics too.
        value = rng.normal(size=v.shape)
        if "variance" in v.name:
            value = np.abs(value) + 0.5
        v.assign(value.astype("float32"))
    student = {
        "s1": rng.normal(size=(2, 8, 8, 3)),
        "s2": rng.normal(size=(2, 2, 2, 5)),
        "s3": rng.normal(size=(2, 6)),
    }
    teacher = {
        "t1": rng.normal(size=(2, 8, 8, 4)),
        "t2": rng.normal(size=(2, 4, 4, 6)),
        "t3": rng.normal(size=(2, 7)),
    }
    student = {k: v.astype("float32") for k, v in student.items()}
    teacher = {k: v.astype("float32") for k, v in teacher.items()}
    term.factor.assign(0.5)
    # NumPy: from the deepest stage back, the residual passed on.
    maps = [student["s1"], student["s2"], student["s3"][:, None, None, :]]
    targets = [teacher["t1"], teacher["t2"], teacher["t3"][:, None, None, :]]
    outputs, residual = [None] * 3, None
    for i in reversed(range(3)):
        outputs[i], residual = np_abf(
            term.fusions[i],
            maps[i].astype("float64"),
            residual,
            targets[i].shape[1:3],
        )
    ours = term.fuse([student["s1"], student["s2"], student["s3"]])
    for out, ref, target in zip(ours, outputs, targets):
        assert out.shape == target.shape  # The teacher's shape, every stage.
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(out), ref, rtol=1e-4, atol=1e-4
        )
    loss = keras.ops.convert_to_numpy(term([teacher], student, training=False))
    reference = 0.5 * sum(np_hcl(o, t) for o, t in zip(outputs, targets))
    print(
        "ReviewKD fused-output max abs diff:",
        max(
            np.abs(keras.ops.convert_to_numpy(o) - r).max()
            for o, r in zip(ours, outputs)
        ),
        "loss abs diff:",
        abs(loss.mean() - reference),
    )
    np.testing.assert_allclose(loss.mean(), reference, rtol=1e-4)
    # mdistiller: mid_channel = min(512, last student channels); no fusion
    # at the deepest stage.
    assert [f.mid_channels for f in term.fusions] == [6, 6, 6]
    assert [f.fuse for f in term.fusions] == [True, True, False]


@pytest.mark.multi_backend
def test_fit_trains_fusions_freezes_teacher_and_warms_up(digits):
    x, _, y, _ = digits
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(0)
    teacher = small_cnn(16, name="teacher")
    student = small_cnn(8, name="student")
    names = ["stage1", "stage2", "features"]
    review = kd.losses.ReviewDistillation(names, names, warmup_epochs=4)
    distiller = kd.Distiller(
        teacher, student, [review], student_loss_weight=1.0, weighting="additive"
    )
    distiller.compile(keras.optimizers.Adam(3e-3), loss=sparse_ce())
    assert not {id(v) for v in review.weights} & {id(v) for v in student.weights}
    before = [keras.ops.convert_to_numpy(v) for v in review.trainable_weights]
    teacher_before = [keras.ops.convert_to_numpy(v) for v in teacher.weights]
    factors = []
    hook = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: (
            review.on_epoch_begin(epoch),
            factors.append(float(keras.ops.convert_to_numpy(review.factor))),
        )
    )
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[hook])
    assert factors == [0.25, 0.5, 0.75, 1.0]
    losses = np.array(history.history["review_distillation"])
    assert np.isfinite(losses).all() and (losses > 0).all()
    for old, new in zip(before, review.trainable_weights):
        assert not np.allclose(old, keras.ops.convert_to_numpy(new)), new.path
    for old, new in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(old, new)


def test_bad_layer_lists_are_refused_before_training():
    with pytest.raises(ValueError, match="same, non-zero number"):
        kd.losses.ReviewDistillation(["stage1", "stage2"], ["stage2"])
    with pytest.raises(ValueError, match="same, non-zero number"):
        kd.losses.ReviewDistillation([], [])
    term = kd.losses.ReviewDistillation(["a"], ["b"])
    with pytest.raises(ValueError, match="one teacher"):
        term.build([{"a": (None, 4)}] * 2, {"b": (None, 4)})
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"a": (None, 4, 4)}], {"b": (None, 4)})
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    with pytest.raises(ValueError, match="no layer named 'stage9'"):
        kd.Distiller(
            teacher, student, [kd.losses.ReviewDistillation(["stage9"], ["stage2"])]
        )


def test_config_round_trip():
    term = kd.losses.ReviewDistillation(
        ["a", "b"], ["c", "d"], mid_channels=32, warmup_epochs=20
    )
    clone = kd.losses.ReviewDistillation.from_config(term.get_config())
    assert clone.get_config() == term.get_config()


def test_preset_taps_the_official_stages_and_shapes():
    builder = reviewkd_presets._reviewkd
    teacher = kd.models.get("resnet32x4", num_classes=10)
    student = kd.models.get("resnet8x4", num_classes=10)
    [(key, term, weight)] = builder(
        [teacher], student, weight=5.0, warmup_epochs=20, mid_channels=None
    )
    assert (key, weight, term.warmup_epochs) == ("reviewkd", 5.0, 20)
    assert term.teacher_layer_names == [
        "block1_5_add",
        "block2_5_add",
        "block3_5_add",
        "features",
    ]
    assert term.student_layer_names == ["stage1", "stage2", "stage3", "features"]
    kd.Distiller(teacher, student, [term])
    # mdistiller CFG.REVIEWKD: OUT_CHANNELS [64, 128, 256, 256], SHAPES
    # [1, 8, 16, 32] (deep first), mid channel min(512, 256).
    assert [f.out_channels for f in term.fusions] == [64, 128, 256, 256]
    assert [f.out_size[0] for f in term.fusions] == [32, 16, 8, 1]
    assert {f.mid_channels for f in term.fusions} == {256}
