"""MLKD against a NumPy port of the official `KD_ours.forward_train`
(Jin-Ying/Multi-Level-Logit-Distillation) and its LS variant (MLKD.py of
sunshangquan/logit-standardization-KD)."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import assert_unchanged
from helpers import fit_steps
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import ops

import keras_kd as kd
from keras_kd.losses.multi_level_logit_distillation import percentile

pytestmark = pytest.mark.multi_backend


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_standardize(z):
    """The LS code's `normalize`: torch's unbiased std, 1e-7 outside."""
    return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def np_kd(z_s, z_t, t, stand=False):
    """`kd_loss` with its default `reduce=True`: a batch-mean scalar."""
    if stand:
        z_s, z_t = np_standardize(z_s), np_standardize(z_t)
    p_t = np_softmax(z_t / t)
    log_p_s = np.log(np_softmax(z_s / t))
    return (p_t * (np.log(p_t) - log_p_s)).sum(1).mean() * t**2


def np_cc(z_s, z_t, t):
    p_s, p_t = np_softmax(z_s / t), np_softmax(z_t / t)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / z_t.shape[1]


def np_bc(z_s, z_t, t):
    p_s, p_t = np_softmax(z_s / t), np_softmax(z_t / t)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / z_t.shape[0]


def np_ce(z, y):
    return -np.log(np_softmax(z)[np.arange(len(y)), y]).mean()


def np_mlkd_official(sw, ss, tw, ts, y, temperature, ce_w, kd_w, stand=False):
    """The official losses dict, in float64: every masked loss is a scalar
    times a boolean mask, then averaged (so the mask scales it)."""
    sw, ss, tw, ts = (a.astype("float64") for a in (sw, ss, tw, ts))
    p_tw = np_softmax(tw)
    confidence = p_tw.max(1)
    mask = confidence <= np.percentile(confidence, 50)
    class_confidence = p_tw.sum(0)
    class_mask = class_confidence <= np.percentile(class_confidence, 50)
    temps = [temperature, 3.0, 5.0, 2.0, 6.0]
    kd_weak = sum(kd_w * (np_kd(sw, tw, t, stand) * mask).mean() for t in temps)
    # The official strong sum reads the strong view at T, 3, 5 and the
    # weak one at 2 and 6.
    kd_strong = sum(kd_w * np_kd(ss, ts, t, stand) for t in temps[:3])
    kd_strong += sum(kd_w * np_kd(sw, tw, t, stand) for t in temps[3:])
    cc_weak = sum(kd_w * (np_cc(sw, tw, t) * class_mask).mean() for t in temps)
    bc_weak = sum(kd_w * (np_bc(sw, tw, t) * mask).mean() for t in temps)
    return {
        "loss_ce": ce_w * (np_ce(sw, y) + np_ce(ss, y)),
        "loss_kd": kd_weak + kd_strong,
        "loss_cc": cc_weak,
        "loss_bc": bc_weak,
    }


def logits(seed, n=16, c=10, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(4, n, c)) * scale).astype("float32")
    return z, rng.integers(0, c, size=n)


def run(term, z, y):
    """The term on weak and strong logits concatenated, as in the step."""
    sw, ss, tw, ts = z
    value = term(
        [{"logits": ops.convert_to_tensor(np.concatenate([tw, ts]))}],
        {"logits": ops.convert_to_tensor(np.concatenate([sw, ss]))},
        labels=ops.convert_to_tensor(y),
        teacher_weights=[1.0],
    )
    return {k: float(ops.convert_to_numpy(v)) for k, v in value.items()}


def check_official(got, z, y, temperature, ce_w, kd_w, stand):
    official = np_mlkd_official(*z, y, temperature, ce_w, kd_w, stand)
    np.testing.assert_allclose(got["instance"], official["loss_kd"], rtol=2e-5)
    np.testing.assert_allclose(got["class"], official["loss_cc"], rtol=2e-5)
    np.testing.assert_allclose(got["batch"], official["loss_bc"], rtol=2e-5)
    # The weak view's CE is the Distiller's student loss (weight ce_w).
    ce = ce_w * np_ce(z[0].astype("float64"), y) + got["ce_strong"]
    np.testing.assert_allclose(ce, official["loss_ce"], rtol=2e-5)


@pytest.mark.parametrize("n", [16, 15])
def test_mlkd_matches_official_loss(n):
    z, y = logits(0, n=n)
    check_official(
        run(kd.losses.MultiLevelLogitDistillation(), z, y), z, y, 4.0, 0.1, 0.9, False
    )


def test_mlkd_ls_matches_official_loss():
    z, y = logits(1, scale=5.0)
    term = kd.losses.MultiLevelLogitDistillation(
        temperatures=(2.0, 3.0, 5.0, 2.0, 6.0), kd_weight=9.0, standardize=True
    )
    check_official(run(term, z, y), z, y, 2.0, 0.1, 9.0, True)


def test_mlkd_masks_scale_by_the_fraction_at_or_below_the_median():
    z, y = logits(2, n=8)
    sw, ss, tw, ts = z
    term = kd.losses.MultiLevelLogitDistillation(
        temperatures=(4.0,), strong_kd_views=("weak",), ce_weight=0.0, kd_weight=1.0
    )
    got = run(term, z, y)
    # 8 distinct confidences: 4 at or below the median; 10 classes: 5.
    kd_weak = np_kd(sw.astype("float64"), tw.astype("float64"), 4.0)
    np.testing.assert_allclose(got["instance"], 1.5 * kd_weak, rtol=2e-5)
    np.testing.assert_allclose(got["class"], 0.5 * np_cc(sw, tw, 4.0), rtol=1e-4)
    np.testing.assert_allclose(got["batch"], 0.5 * np_bc(sw, tw, 4.0), rtol=1e-4)
    # A teacher equally confident on every sample: all are at the median.
    tied = [sw, ss, np.tile(tw[:1], (8, 1)), ts]
    np.testing.assert_allclose(
        run(term, tied, y)["batch"], np_bc(sw, tied[2], 4.0), rtol=1e-4
    )


@pytest.mark.parametrize("q", [0.0, 30.0, 50.0, 87.5, 100.0])
@pytest.mark.parametrize("n", [1, 7, 10])
def test_percentile_matches_numpy_linear(q, n):
    values = np.random.default_rng(n).random(n).astype("float32")
    got = float(ops.convert_to_numpy(percentile(values, q)))
    np.testing.assert_allclose(got, np.percentile(values, q), rtol=1e-6)


def test_mlkd_one_hot_labels_and_float32_outputs():
    z, y = logits(3)
    term = kd.losses.MultiLevelLogitDistillation()
    sparse = run(term, z, y)
    one_hot = run(term, z, np.eye(10, dtype="float32")[y])
    assert sparse == pytest.approx(one_hot, rel=1e-6)
    value = term(
        [{"logits": ops.cast(np.concatenate(z[2:]), "float16")}],
        {"logits": ops.cast(np.concatenate(z[:2]), "float16")},
        labels=y,
        teacher_weights=[1.0],
    )
    assert {keras.backend.standardize_dtype(v.dtype) for v in value.values()} == {
        "float32"
    }


def test_mlkd_views_weak_then_strong():
    x = np.full((3, 8, 8, 1), 0.5, "float32")
    plain = kd.losses.MultiLevelLogitDistillation(strong_augment=False)
    views = ops.convert_to_numpy(plain.transform_inputs(x, training=True))
    np.testing.assert_array_equal(views, np.concatenate([x, x]))
    # Crops on their own per view, padded with black (−mean/std = −0.25).
    term = kd.losses.MultiLevelLogitDistillation(
        crop_padding=4, mean=64.0, std=128.0, seed=0
    )
    views = ops.convert_to_numpy(term.transform_inputs(x, training=True))
    assert views.shape == (6, 8, 8, 1)
    assert (views[:3] == -0.5).any()
    assert set(np.unique(views[:3])) <= {0.5, -0.5}
    assert not np.array_equal(views[:3], views[3:])
    evaluation = ops.convert_to_numpy(term.transform_inputs(x, training=False))
    np.testing.assert_array_equal(evaluation, np.concatenate([x, x]))


def test_mlkd_config_round_trip():
    term = kd.losses.MultiLevelLogitDistillation(
        temperatures=(2.0, 3.0),
        strong_kd_views=("weak", "strong"),
        kd_weight=9.0,
        percentile=40.0,
        standardize=True,
        crop_padding=4,
        mean=[125.3, 123.0, 113.9],
        std=[63.0, 62.1, 66.7],
        seed=3,
        name="mlkd",
    )
    clone = kd.losses.MultiLevelLogitDistillation.from_config(term.get_config())
    assert clone.get_config() == term.get_config()
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(term)
    )
    assert isinstance(restored, kd.losses.MultiLevelLogitDistillation)
    assert restored.get_config() == term.get_config()


def test_mlkd_rejects_bad_arguments_and_inputs():
    term = kd.losses.MultiLevelLogitDistillation
    with pytest.raises(ValueError, match="temperatures"):
        term(temperatures=(4.0, 0.0), strong_kd_views=("weak", "weak"))
    with pytest.raises(ValueError, match="strong_kd_views"):
        term(strong_kd_views=("strong",))
    with pytest.raises(ValueError, match="strong_kd_views"):
        term(temperatures=(4.0,), strong_kd_views=("both",))
    with pytest.raises(ValueError, match="kd_weight"):
        term(kd_weight=-1.0)
    with pytest.raises(ValueError, match="percentile"):
        term(percentile=101.0)
    with pytest.raises(ValueError, match="crop_padding"):
        term(crop_padding=1.5)
    with pytest.raises(ValueError, match="image batches"):
        term().transform_inputs(np.zeros((2, 5), "float32"))
    shapes = {"logits": (None, 10)}
    with pytest.raises(ValueError, match="one teacher"):
        term().build([shapes, shapes], shapes)
    with pytest.raises(ValueError, match="SoftLabelTeacher"):
        term().build([{"probabilities": (None, 10)}], shapes)
    with pytest.raises(ValueError, match="per-token"):
        term().build([{"logits": (None, 5, 10)}], {"logits": (None, 5, 10)})
    z, _ = logits(4)
    with pytest.raises(ValueError, match="labels"):
        term()([{"logits": z[2]}], {"logits": z[0]}, teacher_weights=[1.0])


def sequence_model(name):
    inputs = keras.Input((5, 3))
    return keras.Model(inputs, keras.layers.Dense(10)(inputs), name=name)


def test_mlkd_refuses_sequence_logits_in_the_distiller():
    term = kd.losses.MultiLevelLogitDistillation(strong_augment=False)
    with pytest.raises(ValueError, match="per token"):
        kd.Distiller(sequence_model("teacher"), sequence_model("student"), term)


def test_mlkd_preset_trains_on_digits(digits, trained_teacher):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(1)
    student = small_cnn(4, name="student")
    teacher_before = all_values(trained_teacher)
    student_before = trainable_values(student)
    # Digits are in [0, 1]: 8-bit pixels / 255.
    kwargs = kd.presets.build(
        "mlkd", trained_teacher, student, mlkd_crop_padding=1, mlkd_std=255.0
    )
    distiller = kd.Distiller(trained_teacher, student, **kwargs)
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9), sparse_ce())
    history = fit_steps(distiller, x_train, y_train)
    assert_all_moved(student_before, trainable_values(student), "student variable")
    assert_unchanged(teacher_before, all_values(trained_teacher))
    parts = ["instance", "class", "batch", "ce_strong"]
    np.testing.assert_allclose(
        history["mlkd"][0], sum(history[f"mlkd_{p}"][0] for p in parts), rtol=1e-4
    )
    assert all(history[f"mlkd_{p}"][0] > 0 for p in parts)
    # Evaluation runs the student alone (the views exist in training only).
    assert np.isfinite(distiller.evaluate(x_train[:64], y_train[:64], verbose=0))


def test_mlkd_student_loss_reads_the_weak_view():
    rng = np.random.default_rng(5)
    x = rng.random((32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 32)
    keras.utils.set_random_seed(2)
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    # No augmentation: both views are the batch, so the strong CE is the
    # student loss times ce_weight.
    term = kd.losses.MultiLevelLogitDistillation(strong_augment=False, ce_weight=0.5)
    distiller = kd.Distiller(
        teacher, student, term, student_loss_weight=1.0, weighting="additive"
    )
    distiller.compile(keras.optimizers.SGD(0.0), sparse_ce())
    history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    np.testing.assert_allclose(
        history["multi_level_logit_distillation_ce_strong"][0],
        0.5 * history["student_loss"][0],
        rtol=1e-4,
    )
