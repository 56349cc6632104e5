"""The Distiller rejects bad input before training, with a message that
names the problem and the fix (a NaN loss during training:
test_distiller.py::test_nan_loss_stops_training_naming_the_terms)."""

import numpy as np
import pytest
from helpers import DictStudent
from helpers import small_cnn

import keras_kd as kd


def bad_cases():
    t, s = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    logits = kd.losses.LogitsDistillation()
    plain = DictStudent(return_dict=False, name="plain")
    plain(np.zeros((1, 8, 8, 1), "float32"))
    return {
        "unknown layer": (
            lambda: kd.Distiller(t, s, kd.losses.FeatureAlignment("stage9", "stage2")),
            r"no layer named 'stage9'.*Available layers: \[.*'stage2'",
        ),
        "feature shapes": (
            lambda: kd.Distiller(
                t, s, kd.losses.FeatureDistillation("stage2", "stage2")
            ),
            "Use kd.losses.FeatureAlignment",
        ),
        "weights length": (
            lambda: kd.Distiller(t, s, [logits], distillation_loss_weights=[1.0, 2.0]),
            "one weight per term",
        ),
        "student weight": (
            lambda: kd.Distiller(t, s, logits, student_loss_weight=1.5),
            r"student_loss_weight must be a number in \[0, 1\]",
        ),
        "teacher weights": (
            lambda: kd.Distiller([t, t], s, logits, teacher_weights=[1.0]),
            "one positive weight per teacher",
        ),
        "subclassed tensor output, feature term": (
            lambda: kd.Distiller(
                t, plain, kd.losses.FeatureAlignment("stage2", "conv")
            ),
            r"the terms read \['conv'\].*a dict of named outputs",
        ),
        "table size": (
            lambda: kd.Distiller(kd.SoftLabelTeacher(np.eye(5)), s, logits),
            "5 classes and the student 10",
        ),
        "label teacher features": (
            lambda: kd.Distiller(
                kd.SoftLabelTeacher(np.eye(10)),
                s,
                kd.losses.FeatureAlignment("a", "stage2"),
            ),
            "SoftLabelTeacher has no features",
        ),
        "input shapes": (
            lambda: kd.Distiller(small_cnn(8, input_shape=(16, 16, 1)), s, logits),
            "must agree",
        ),
        "weighting": (
            lambda: kd.Distiller(t, s, logits, weighting="mean"),
            "weighting must be",
        ),
        "no terms": (lambda: kd.Distiller(t, s, []), "at least one term"),
        "no loss": (
            lambda: kd.Distiller(t, s, logits).compile(optimizer="adam"),
            "needs the student's supervised `loss`",
        ),
    }


@pytest.mark.multi_backend
@pytest.mark.parametrize("case", sorted(bad_cases()))
def test_bad_input_is_rejected_before_training(case):
    make, message = bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        make()
