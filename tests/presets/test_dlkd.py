"""The dlkd preset passes the official per-view augmentation to the term."""

import numpy as np
import pytest

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def test_dlkd_preset_per_view_crops():
    teacher = kd.models.get("digits_cnn_large", num_classes=10, input_shape=(8, 8, 1))
    student = kd.models.get("digits_cnn_small", num_classes=10, input_shape=(8, 8, 1))
    (term,) = kd.presets.build("dlkd", teacher, student)["distillation_losses"]
    assert term.crop_padding == 0  # No augmentation unless asked.
    (term,) = kd.presets.build(
        "dlkd", teacher, student, dlkd_crop_padding=4, dlkd_pad_value=[-0.5]
    )["distillation_losses"]
    assert term.crop_padding == 4 and term.pad_value == [-0.5]
    # Training views: 4 rotations of each image, each cropped on its own
    # after black (-0.5) padding; a constant image shows the padding.
    x = np.ones((3, 8, 8, 1), "float32")
    views = np.asarray(term.transform_inputs(x, training=True))
    assert views.shape == (12, 8, 8, 1)
    assert set(np.unique(views)) <= {1.0, -0.5}
    assert (views == -0.5).any()
