"""OFD against NumPy references written from the paper and the official code
(clovaai/overhaul-distillation CIFAR-100/distiller.py, mdistiller
distillers/OFD.py)."""

import math

import keras
import numpy as np
import pytest
from keras import layers
from keras import ops

import keras_kd as kd
from keras_kd.losses.overhaul_feature_distillation import margin_from_batch_norm
from keras_kd.models import batch_norm_before
from keras_kd.models import preactivation_layer_names
from keras_kd.presets import ofd as ofd_presets


def np_margin(gamma, beta):
    """E[x·1(x<0)] / P(x<0) for x ~ N(beta, gamma²), by numerical
    integration; -3|gamma| when P(x<0) <= 0.001 (the official fallback)."""
    s = abs(gamma)
    x = np.linspace(beta - 40.0 * s, 0.0, 2_000_001)
    pdf = np.exp(-0.5 * ((x - beta) / s) ** 2) / (s * np.sqrt(2.0 * np.pi))
    trapezoid = lambda y: float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())
    below = trapezoid(pdf)
    return trapezoid(x * pdf) / below if below > 0.001 else -3.0 * s


def test_margin_matches_the_gaussian_negative_mean():
    # (gamma, beta): centred, negative mean, negative gamma, just above and
    # below the 0.001 fallback (P(x<0) = 0.00135, 0.00069), far below it.
    pairs = [
        (1.0, 0.0),
        (2.0, -1.0),
        (-0.5, 0.3),
        (0.7, 1.5),
        (1.0, 3.0),
        (1.0, 3.2),
        (0.1, 0.5),
    ]
    bn = layers.BatchNormalization()
    bn.build((None, 4, 4, len(pairs)))
    gamma, beta = np.array(pairs, "float32").T
    bn.set_weights([gamma, beta, np.zeros_like(gamma), np.ones_like(gamma)])
    got = margin_from_batch_norm(bn)
    expected = [np_margin(g, b) for g, b in zip(gamma, beta)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[5] == pytest.approx(-3.0) and got[6] == pytest.approx(-0.3)
    # A batch norm without scale/offset is N(0, 1): margin -sqrt(2/pi).
    plain = layers.BatchNormalization(center=False, scale=False)
    plain.build((None, 2, 2, 3))
    np.testing.assert_allclose(
        margin_from_batch_norm(plain), [-math.sqrt(2 / math.pi)] * 3, rtol=1e-6
    )


def np_partial_l2(source, target, margin):
    """mdistiller's three-case form of the partial L2, summed per sample."""
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin))
        + (source - target) ** 2
        * ((source > target) & (target > margin) & (target <= 0))
        + (source - target) ** 2 * (target > 0)
    )
    return loss.reshape(len(loss), -1).sum(-1)


def np_connector(f_s, kernel, gamma, beta):
    """1x1 conv then batch norm with the batch's statistics (training)."""
    y = f_s @ kernel.reshape(kernel.shape[-2:])
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    return (y - mean) / np.sqrt(var + 1e-5) * gamma + beta


def np_adaptive_pool(f, size):
    _, h, w, _ = f.shape
    out = np.zeros((f.shape[0],) + tuple(size) + (f.shape[-1],))
    for i in range(size[0]):
        r0, r1 = (i * h) // size[0], -(-((i + 1) * h) // size[0])
        for j in range(size[1]):
            c0, c1 = (j * w) // size[1], -(-((j + 1) * w) // size[1])
            out[:, i, j] = f[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.multi_backend
def test_ofd_matches_numpy_with_pooling_stage_weights_and_two_teachers():
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.normal(size=s).astype("float32")
    teachers = [
        {"a": f32(4, 8, 8, 6), "b": f32(4, 4, 4, 5)},
        {"a": f32(4, 4, 4, 3), "b": f32(4, 2, 2, 4)},
    ]
    student = {"x": f32(4, 4, 4, 2), "y": f32(4, 2, 2, 7)}
    margins = [[-np.abs(f32(6)), -np.abs(f32(5))], [-np.abs(f32(3)), -np.abs(f32(4))]]
    term = kd.losses.OverhaulFeatureDistillation(["a", "b"], ["x", "y"], margins)
    term.build(
        [{k: v.shape for k, v in t.items()} for t in teachers],
        {k: v.shape for k, v in student.items()},
    )
    params = []
    for connector in term.connectors:
        kernel, gamma, beta, mm, mv = connector.get_weights()
        kernel = rng.normal(size=kernel.shape).astype("float32")
        gamma, beta = 1.0 + f32(*gamma.shape), f32(*beta.shape)
        connector.set_weights([kernel, gamma, beta, mm, mv])
        params.append((kernel, gamma, beta))
    got = ops.convert_to_numpy(
        term(teachers, student, teacher_weights=[0.25, 0.75], training=True)
    )
    expected, k = 0.0, 0
    for w, t, per_teacher in zip([0.25, 0.75], teachers, margins):
        for i, (tn, sn) in enumerate([("a", "x"), ("b", "y")]):
            source = np_connector(student[sn].astype("float64"), *params[k])
            target = np_adaptive_pool(t[tn].astype("float64"), source.shape[1:3])
            # Pair weight 1 / 2^(n-1-i): 1/2 for the first, 1 for the last.
            expected = expected + w * np_partial_l2(
                source, target, per_teacher[i]
            ) / 2 ** (1 - i)
            k += 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_ofd_skips_only_non_positive_targets_the_student_is_below():
    # Margin -1; per position (t, s): below the margin and the student
    # below it (skip), below the margin and the student above it (to the
    # margin), negative target above the margin with the student above
    # (kept) and below (skip), positive target (always kept).
    term = kd.losses.OverhaulFeatureDistillation("a", "x", [[[-1.0]]])
    term.build([{"a": (None, 1, 5, 1)}], {"x": (None, 1, 5, 1)})
    term.connectors[0].set_weights(
        [
            np.ones((1, 1, 1, 1), "float32"),
            np.ones(1, "float32"),
            np.zeros(1, "float32"),
            np.zeros(1, "float32"),
            np.ones(1, "float32"),
        ]
    )
    t = np.array([-3.0, -3.0, -0.5, -0.5, 2.0], "float32").reshape(1, 1, 5, 1)
    s = np.array([-2.0, -0.5, 0.5, -0.7, 1.0], "float32").reshape(1, 1, 5, 1)
    got = term([{"a": t}], {"x": s}, teacher_weights=[1.0], training=False)
    c = 1.0 / np.sqrt(1.0 + 1e-5)  # The connector's BN in inference mode.
    expected = (-0.5 * c + 1.0) ** 2 + (0.5 * c + 0.5) ** 2 + (c - 2.0) ** 2
    assert float(ops.convert_to_numpy(got)[0]) == pytest.approx(expected, rel=1e-6)


def test_zoo_pre_relu_taps_and_their_batch_norms():
    resnet = kd.models.get("resnet8x4", num_classes=10)
    names = preactivation_layer_names(resnet)
    assert names == ["block1_1_add", "block2_1_add", "block3_1_add"]
    # The official get_bn_before_relu: the last block's bn2 per stage.
    assert [batch_norm_before(resnet, n).name for n in names] == [
        "block1_1_2_bn",
        "block2_1_2_bn",
        "block3_1_2_bn",
    ]
    wrn = kd.models.get("wrn_16_2", num_classes=10)
    names = preactivation_layer_names(wrn)
    # Official: block2.layer[0].bn1, block3.layer[0].bn1, the final bn1.
    assert names == ["block2_1_bn1", "block3_1_bn1", "final_bn"]
    assert [batch_norm_before(wrn, n).name for n in names] == names
    for model, name in [(resnet, "block1_1_add"), (wrn, "final_bn")]:
        consumers = [
            layer
            for layer in model.layers
            if any(
                t is model.get_layer(name).output
                for t in keras.tree.flatten(layer.input)
            )
        ]
        assert [type(c) for c in consumers] == [layers.ReLU]


def test_ofd_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        kd.losses.OverhaulFeatureDistillation(["a", "b"], ["x"], [[[0.0]]])
    with pytest.raises(ValueError, match="margin vectors"):
        kd.losses.OverhaulFeatureDistillation(["a", "b"], ["x", "y"], [[[0.0]]])
    term = kd.losses.OverhaulFeatureDistillation("a", "x", [[[-1.0] * 3]])
    with pytest.raises(ValueError, match="4 channels but its margin has 3"):
        term.build([{"a": (None, 4, 4, 4)}], {"x": (None, 4, 4, 2)})
    with pytest.raises(ValueError, match="margins for 1 teachers"):
        term.build([{"a": (None, 4, 4, 3)}] * 2, {"x": (None, 4, 4, 2)})
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"a": (None, 4, 4, 3)}], {"x": (None, 2)})
    # A teacher whose tapped layer has no batch norm before the ReLU.
    inputs = keras.Input((8, 8, 1))
    h = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = layers.ReLU(name="stage1")(h)
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(h))
    plain = keras.Model(inputs, outputs, name="plain")
    with pytest.raises(ValueError, match="neither a BatchNormalization"):
        kd.losses.OverhaulFeatureDistillation.from_teacher(plain, "conv", "x")
    with pytest.raises(ValueError, match="one batch norm per layer"):
        kd.losses.OverhaulFeatureDistillation.from_teacher(
            plain, "conv", "x", teacher_bn_layer_names=["a", "b"]
        )


def test_ofd_config_round_trip():
    term = kd.losses.OverhaulFeatureDistillation(
        ["a", "b"], ["c", "d"], [[np.array([-1.0, -0.5]), [-0.2]]], name="ofd"
    )
    restored = kd.losses.OverhaulFeatureDistillation.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
    assert restored.margins == [[[-1.0, -0.5], [-0.2]]]


def test_ofd_preset_trains_connectors_not_the_teacher(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher = kd.models.digits_cnn_large()
    student = kd.models.digits_cnn_small()
    teacher_before = [w.copy() for w in teacher.get_weights()]
    [(key, ofd, weight)] = ofd_presets._ofd([teacher], student, ofd_weight=1e-3)
    assert (key, weight) == ("ofd", 1e-3)
    assert ofd.teacher_layer_names == ["block1_1_add", "block2_1_add"]
    np.testing.assert_allclose(
        ofd.margins[0][1], margin_from_batch_norm(teacher.get_layer("block2_1_2_bn"))
    )
    distiller = kd.Distiller(
        teacher,
        student,
        [kd.losses.LogitsDistillation(4.0), ofd],
        distillation_loss_weights=[0.9, weight],
        weighting="additive",
        student_loss_weight=1.0,
    )
    term_vars = [v for c in ofd.connectors for v in c.trainable_variables]
    student_ids = {id(v) for v in student.trainable_variables}
    assert term_vars and not any(id(v) in student_ids for v in term_vars)
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
    losses = history.history["ofd"]
    assert np.isfinite(losses).all() and losses[0] > 0
    for b, v in zip(before, term_vars):
        assert not np.allclose(b, ops.convert_to_numpy(v)), v.path
    for b, a in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)
    with pytest.raises(ValueError, match="margins for 1 teachers"):
        kd.Distiller(
            [teacher, kd.models.digits_cnn_large()],
            student,
            kd.losses.OverhaulFeatureDistillation.from_teacher(
                teacher, ofd.teacher_layer_names, ofd.student_layer_names
            ),
        )


def test_ofd_and_vid_combine_and_survive_save_and_load(tmp_path):
    teacher = kd.models.digits_cnn_large()
    student = kd.models.digits_cnn_small()
    ofd = kd.losses.OverhaulFeatureDistillation.from_teacher(
        teacher, preactivation_layer_names(teacher), preactivation_layer_names(student)
    )
    vid = kd.losses.VariationalInformationDistillation(
        ["stage1", "stage2"], ["stage1", "stage2"]
    )
    distiller = kd.Distiller(
        teacher,
        student,
        [ofd, vid],
        [1e-3, 1.0],
        weighting="additive",
        student_loss_weight=1.0,
    )
    for v in ofd.weights + vid.weights:
        v.assign(np.random.default_rng(0).normal(size=v.shape))
    distiller.save(tmp_path / "d.keras")
    restored = keras.saving.load_model(tmp_path / "d.keras")
    r_ofd, r_vid = restored.distillation_losses
    assert r_ofd.margins == ofd.margins
    for a, b in zip(ofd.weights + vid.weights, r_ofd.weights + r_vid.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
