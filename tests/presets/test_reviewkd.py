"""The 'reviewkd' preset: the layers it taps, checked against mdistiller's
`preact_feats`/`feats` and the authors' code, and the authors' per-pair
weights (dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh)."""

import keras
import numpy as np
import pytest
from helpers import sparse_ce
from keras import layers

import keras_kd as kd


class Named:
    def __init__(self, name):
        self.name = name


def producer(model, layer):
    """The layer whose output is `layer`'s (single) input."""
    return next(p for p in model.layers if p.output is layer.input)


def resolved_weight(teacher_name, student_name, **overrides):
    preset = kd.presets.get("reviewkd")
    values = preset.hyperparameters(
        [Named(teacher_name)], Named(student_name), overrides
    )
    return values["weight"]


def test_wrn_teacher_taps_the_batch_norms_of_mdistiller_preact_feats():
    # mdistiller wrn.py forward: f1_pre = block2.layer[0].bn1(f1),
    # f2_pre = block3.layer[0].bn1(f2), f3_pre = bn1(f3).
    teacher = kd.models.get("wrn_40_2", num_classes=10)
    student = kd.models.get("wrn_16_2", num_classes=10)
    kwargs = kd.presets.build("reviewkd", teacher, student)
    (term,) = kwargs["distillation_losses"]
    taps = ["block2_1_bn1", "block3_1_bn1", "final_bn"]
    assert term.teacher_layer_names == taps + ["features"]
    assert term.student_layer_names == ["stage1", "stage2", "stage3", "features"]
    for stage, name in enumerate(taps, start=1):
        bn = teacher.get_layer(name)
        assert isinstance(bn, layers.BatchNormalization)
        assert bn.input is teacher.get_layer(f"stage{stage}").output
    # nChannels [16, 16k, 32k, 64k] with k = 2 at 32, 16, 8 pixels.
    shapes = [tuple(teacher.get_layer(n).output.shape[1:]) for n in taps]
    assert shapes == [(32, 32, 32), (16, 16, 64), (8, 8, 128)]
    # The authors' build_review_kd for a wrn student: OUT_CHANNELS
    # [32, 64, 128, 128], shapes [1, 8, 16, 32] (deep first).
    kd.Distiller(teacher, student, [term])
    assert [f.out_channels for f in term.fusions] == [32, 64, 128, 128]
    assert [f.out_size[0] for f in term.fusions] == [32, 16, 8, 1]
    assert kwargs["distillation_loss_weights"] == [5.0]


def test_wrn_tap_values_are_the_batch_norm_of_the_stage_output():
    teacher = kd.models.get("wrn_16_2", num_classes=10)
    rng = np.random.default_rng(0)
    bn = teacher.get_layer("block2_1_bn1")
    bn.moving_mean.assign(rng.normal(size=32).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=32).astype("float32"))
    bn.gamma.assign(rng.normal(size=32).astype("float32"))
    probe = keras.Model(teacher.input, [teacher.get_layer("stage1").output, bn.output])
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    stage, tap = [keras.ops.convert_to_numpy(t) for t in probe(x, training=False)]

    def value(v):
        return keras.ops.convert_to_numpy(v).astype("float64")

    expected = (stage - value(bn.moving_mean)) / np.sqrt(
        value(bn.moving_variance) + 1e-5
    ) * value(bn.gamma) + value(bn.beta)
    np.testing.assert_allclose(tap, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "teacher_name,student_name,kind,taps",
    [
        # resnet.py BasicBlock: preact is the sum before the last F.relu.
        (
            "resnet56",
            "resnet20",
            layers.Add,
            ["block1_9_add", "block2_9_add", "block3_9_add"],
        ),
        # vgg.py: f{i}_pre = block{i}(x), whose last module is a BN.
        (
            "vgg13",
            "vgg8",
            layers.BatchNormalization,
            ["stage1_2_bn", "stage2_2_bn", "stage3_2_bn", "stage4_2_bn"],
        ),
    ],
)
def test_post_activation_teachers_are_read_before_the_stage_relu(
    teacher_name, student_name, kind, taps
):
    teacher = kd.models.get(teacher_name, num_classes=10)
    student = kd.models.get(student_name, num_classes=10)
    (term,) = kd.presets.build("reviewkd", teacher, student)["distillation_losses"]
    assert term.teacher_layer_names == taps + ["features"]
    stages = [f"stage{i}" for i in range(1, len(taps) + 1)]
    assert term.student_layer_names == stages + ["features"]
    for stage, name in zip(stages, taps):
        relu = teacher.get_layer(stage)
        while isinstance(relu, layers.Identity):
            relu = producer(teacher, relu)
        assert isinstance(relu, layers.ReLU)
        assert producer(teacher, relu) is teacher.get_layer(name)
        assert isinstance(teacher.get_layer(name), kind)


def plain_cnn(width, name):
    """Stages `stage1..3` without residual sums: two BN-ReLU stages, then a
    convolution with its ReLU inside (no pre-activation layer)."""
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for stage in (1, 2):
        x = layers.Conv2D(width * stage, 3, strides=stage, padding="same")(x)
        x = layers.BatchNormalization(name=f"stage{stage}_bn")(x)
        x = layers.ReLU(name=f"stage{stage}")(x)
    x = layers.Conv2D(
        width * 4, 3, strides=2, padding="same", activation="relu", name="stage3"
    )(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = layers.Dense(10, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def test_plain_cnn_without_residual_blocks_trains():
    keras.utils.set_random_seed(0)
    teacher, student = plain_cnn(8, "teacher"), plain_cnn(4, "student")
    kwargs = kd.presets.build("reviewkd", teacher, student, warmup_epochs=4)
    (term,) = kwargs["distillation_losses"]
    assert term.teacher_layer_names == ["stage1_bn", "stage2_bn", "stage3", "features"]
    assert term.student_layer_names == ["stage1", "stage2", "stage3", "features"]
    distiller = kd.Distiller(teacher, student, **kwargs)
    # Eager: tracing ReviewKD's step costs seconds (TensorFlow only here);
    # the compiled step is tested in tests/losses/test_review_distillation.py.
    distiller.compile(keras.optimizers.Adam(1e-2), loss=sparse_ce(), run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=16)
    before = [keras.ops.convert_to_numpy(v) for v in student.trainable_weights]
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["reviewkd"]).all()
    changed = [
        not np.allclose(old, keras.ops.convert_to_numpy(new))
        for old, new in zip(before, student.trainable_weights)
    ]
    assert all(changed)
    # Distiller.fit drives the warm-up: epoch 0 of 4 gives 1/4, not 1.
    assert float(keras.ops.convert_to_numpy(term.factor)) == 0.25


@pytest.mark.parametrize(
    "teacher_name,student_name,weight",
    [
        ("wrn_40_2", "wrn_16_2", 5.0),  # reviewKD.sh l. 1
        ("wrn_40_2", "wrn_40_1", 5.0),  # l. 3
        ("wrn_40_2", "shufflev1", 5.0),  # l. 5
        ("resnet32x4", "resnet8x4", 5.0),  # l. 7
        ("resnet32x4", "shufflev1", 5.0),  # l. 9
        ("resnet32x4", "shufflev2", 8.0),  # l. 11
        ("resnet56", "resnet20", 0.6),  # l. 13
        ("resnet110", "resnet32", 1.0),  # l. 15
        ("vgg13", "vgg8", 1.0),  # Not in the script: train.py's default.
    ],
)
def test_weight_per_pair_follows_the_authors_script(teacher_name, student_name, weight):
    assert resolved_weight(teacher_name, student_name) == weight
    assert resolved_weight(teacher_name, student_name, weight=2.5) == 2.5
