"""The fitnets preset taps RepDistiller's hint layer 2 with ConvReg."""

import keras
import numpy as np
import pytest

import keras_kd as kd


def _fitnets_term(teacher, student, **overrides):
    kwargs = kd.presets.build("fitnets", teacher, student, **overrides)
    (term,) = kwargs["distillation_losses"]
    return term, kwargs


def test_fitnets_taps_the_official_stage_with_a_conv_bn_relu_regressor():
    # RepDistiller train_student.py --hint_layer 2: feat[2], the output of
    # the second stage (layer2 / block2); 16x16 for CIFAR ResNets.
    teacher = kd.models.get("resnet32x4", num_classes=10)
    student = kd.models.get("resnet8x4", num_classes=10)
    term, kwargs = _fitnets_term(teacher, student)
    assert (term.teacher_layer_name, term.student_layer_name) == ("stage2", "stage2")
    # Not the last stage (the old choice).
    assert kd.models.stage_layer_names(student)[-1] != "stage2"
    assert term.aligner == "hint"
    assert kwargs["distillation_loss_weights"] == [100.0]
    distiller = kd.Distiller(teacher, student, **kwargs)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    distiller(x)  # Builds the terms.
    (regressor,) = term.aligners
    kinds = [
        type(layer).__name__
        for layer in regressor.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    assert kinds[-1] == "ReLU", kinds
    assert "BatchNormalization" in kinds and any("Conv" in k for k in kinds), kinds
    # ReLU at the end: the regressor's output is non-negative, and its
    # input is the student's stage-2 map (16x16 here).
    tap = keras.Model(student.inputs, student.get_layer("stage2").output)
    feature = tap(x)
    assert tuple(feature.shape[1:3]) == (16, 16)
    out = keras.ops.convert_to_numpy(regressor(feature))
    assert out.shape[1:] == tuple(teacher.get_layer("stage2").output.shape[1:])
    assert out.min() >= 0.0 and out.max() > 0.0


def test_fitnets_on_the_digits_models_and_user_layers():
    teacher = kd.models.get("digits_cnn_large", num_classes=10, input_shape=(8, 8, 1))
    student = kd.models.get("digits_cnn_small", num_classes=10, input_shape=(8, 8, 1))
    term, _ = _fitnets_term(teacher, student)
    assert (term.teacher_layer_name, term.student_layer_name) == ("stage2", "stage2")
    term, _ = _fitnets_term(
        teacher,
        student,
        teacher_layer="stage1",
        student_layer="stage1",
        fitnets_aligner="linear",
    )
    assert (term.teacher_layer_name, term.aligner) == ("stage1", "linear")
    term, _ = _fitnets_term(teacher, student, hint_layer=1)
    assert term.student_layer_name == "stage1"
    with pytest.raises(ValueError, match="hint_layer 7 is out of range"):
        _fitnets_term(teacher, student, hint_layer=7)
