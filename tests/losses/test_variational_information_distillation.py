"""VID against a NumPy reference written from the paper and the official
code (RepDistiller distiller_zoo/VID.py, mdistiller distillers/VID.py)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd.presets import vid as vid_presets


def np_adaptive_pool(f, size):
    """PyTorch's adaptive_avg_pool2d on NHWC, with explicit bins."""
    _, h, w, _ = f.shape
    out = np.zeros((f.shape[0],) + tuple(size) + (f.shape[-1],))
    for i in range(size[0]):
        r0, r1 = (i * h) // size[0], -(-((i + 1) * h) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * w) // size[1], -(-((j + 1) * w) // size[1])
            out[:, i, j] = f[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


def np_vid(f_s, f_t, kernels, alpha, eps=1e-5):
    """One pair: pool the taller map (official compares heights), regress,
    Gaussian NLL with variance log(1 + exp(alpha)) + eps, mean per sample."""
    if f_s.shape[1] > f_t.shape[1]:
        f_s = np_adaptive_pool(f_s, f_t.shape[1:3])
    elif f_s.shape[1] < f_t.shape[1]:
        f_t = np_adaptive_pool(f_t, f_s.shape[1:3])
    w1, w2, w3 = (k.reshape(k.shape[-2:]).astype("float64") for k in kernels)
    mean = np.maximum(np.maximum(f_s @ w1, 0) @ w2, 0) @ w3
    var = np.log(1.0 + np.exp(alpha.astype("float64"))) + eps
    nll = 0.5 * ((mean - f_t) ** 2 / var + np.log(var))
    return nll.reshape(len(nll), -1).mean(-1)


def randomise(term, rng):
    """Random regressor kernels and log-variances; returns them per pair."""
    params = []
    for regressor, log_scale in zip(term.regressors, term.log_scales):
        kernels = [
            rng.normal(scale=0.5, size=w.shape).astype("float32")
            for w in regressor.get_weights()
        ]
        regressor.set_weights(kernels)
        alpha = rng.normal(size=log_scale.shape).astype("float32")
        log_scale.assign(alpha)
        params.append((kernels, alpha))
    return params


@pytest.mark.multi_backend
def test_vid_matches_numpy_with_pooling_and_two_teachers():
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.normal(size=s).astype("float32")
    teachers = [
        {"a": f32(3, 4, 4, 6), "b": f32(3, 4, 4, 5)},
        {"a": f32(3, 8, 8, 3), "b": f32(3, 2, 2, 4)},
    ]
    student = {"x": f32(3, 8, 8, 2), "y": f32(3, 4, 4, 7)}
    term = kd.losses.VariationalInformationDistillation(["a", "b"], ["x", "y"])
    term.build(
        [{k: v.shape for k, v in t.items()} for t in teachers],
        {k: v.shape for k, v in student.items()},
    )
    params = randomise(term, rng)
    got = ops.convert_to_numpy(term(teachers, student, teacher_weights=[0.25, 0.75]))
    expected, k = 0.0, 0
    for w, t in zip([0.25, 0.75], teachers):
        for tn, sn in [("a", "x"), ("b", "y")]:
            expected = expected + w * np_vid(
                student[sn].astype("float64"), t[tn].astype("float64"), *params[k]
            )
            k += 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Student pooled to 4x4 / teacher pooled to 4x4 / 8x8 kept / student to 2x2.
    assert term.pool_sizes == [(4, 4), (4, 4), (8, 8), (2, 2)]


def test_vid_variance_starts_at_init_pred_var():
    term = kd.losses.VariationalInformationDistillation("a", "x", init_pred_var=5.0)
    term.build([{"a": (None, 4, 4, 6)}], {"x": (None, 4, 4, 3)})
    alpha = ops.convert_to_numpy(term.log_scales[0])
    np.testing.assert_allclose(alpha, np.log(np.exp(5.0 - 1e-5) - 1.0), rtol=1e-6)
    np.testing.assert_allclose(np.log1p(np.exp(alpha)) + 1e-5, 5.0, rtol=1e-6)
    channels = [w.shape for w in term.regressors[0].get_weights()]
    assert channels == [(1, 1, 3, 6), (1, 1, 6, 6), (1, 1, 6, 6)]


def test_vid_float16_features_give_float32_loss():
    rng = np.random.default_rng(1)
    f_t, f_s = rng.normal(size=(2, 2, 4, 4, 3)).astype("float32")
    term = kd.losses.VariationalInformationDistillation("a", "x")
    term.build([{"a": f_t.shape}], {"x": f_s.shape})
    params = randomise(term, rng)
    got = term(
        [{"a": ops.cast(f_t, "float16")}],
        {"x": ops.cast(f_s, "float16")},
        teacher_weights=[1.0],
    )
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda f: f.astype("float16").astype("float64")
    np.testing.assert_allclose(
        ops.convert_to_numpy(got),
        np_vid(rounded(f_s), rounded(f_t), *params[0]),
        rtol=1e-4,
    )


def test_vid_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        kd.losses.VariationalInformationDistillation(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="same length"):
        kd.losses.VariationalInformationDistillation([], [])
    with pytest.raises(ValueError, match="init_pred_var > eps"):
        kd.losses.VariationalInformationDistillation("a", "x", init_pred_var=0.0)
    term = kd.losses.VariationalInformationDistillation("a", "x")
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"a": (None, 4, 4, 8)}], {"x": (None, 16)})


def test_vid_config_round_trip():
    term = kd.losses.VariationalInformationDistillation(
        ["a", "b"], ["c", "d"], init_pred_var=3.0, name="vid"
    )
    restored = kd.losses.VariationalInformationDistillation.from_config(
        term.get_config()
    )
    assert restored.get_config() == term.get_config()
    assert restored.init_pred_var == 3.0 and restored.name == "vid"


def test_vid_trains_regressors_and_variances_not_the_teacher(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher = kd.models.digits_cnn_large()
    student = kd.models.digits_cnn_small()
    teacher_before = [w.copy() for w in teacher.get_weights()]
    vid = kd.losses.VariationalInformationDistillation(
        ["stage1", "stage2"], ["stage1", "stage2"]
    )
    distiller = kd.Distiller(
        teacher,
        student,
        [kd.losses.LogitsDistillation(4.0), vid],
        distillation_loss_weights=[0.9, 1.0],
        weighting="additive",
        student_loss_weight=1.0,
    )
    term_vars = [v for r in vid.regressors for v in r.trainable_variables]
    term_vars += vid.log_scales
    student_ids = {id(v) for v in student.trainable_variables}
    assert not any(id(v) in student_ids for v in term_vars)
    trained_ids = {id(v) for v in distiller.trainable_variables}
    assert all(id(v) in trained_ids for v in term_vars)
    before = [ops.convert_to_numpy(v).copy() for v in term_vars]
    distiller.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = distiller.fit(
        x_train[:128], y_train[:128], epochs=1, batch_size=64, verbose=0
    )
    losses = history.history["variational_information_distillation"]
    assert np.isfinite(losses).all() and losses[0] > 0
    for b, v in zip(before, term_vars):
        assert not np.allclose(b, ops.convert_to_numpy(v)), v.path
    for b, a in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_vid_preset_pairs_the_stages_after_the_stem():
    teacher = kd.models.get("resnet20", num_classes=10)
    student = kd.models.get("resnet8x4", num_classes=10)
    [(key, term, weight)] = vid_presets._vid(
        [teacher], student, vid_weight=1.0, init_pred_var=5.0
    )
    assert key == "vid" and weight == 1.0
    assert term.teacher_layer_names == ["stage1", "stage2", "stage3"]
    assert term.student_layer_names == ["stage1", "stage2", "stage3"]
    assert term.init_pred_var == 5.0
