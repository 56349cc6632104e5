"""VGG with batch norm, CIFAR variants of CRD/RepDistiller."""

import keras
from keras import layers

from keras_kd.models.common import batch_norm
from keras_kd.models.common import classifier
from keras_kd.models.common import conv

VGG8 = [[64], [128], [256], [512], [512]]
VGG13 = [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]


def vgg(cfg, num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0, name="vgg"):
    """Five groups of conv3x3-BN-ReLU, max-pooled in between.

    `cfg` lists the filters of each group's convolutions. The groups' outputs
    are `stem`, `stage1` ... `stage4`. As in RepDistiller the convolutions
    have biases, and the pool between the last two groups is skipped for
    inputs smaller than 64 pixels.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    stage_names = ["stem", "stage1", "stage2", "stage3", "stage4"]
    for stage, (stage_name, filters_list) in enumerate(zip(stage_names, cfg)):
        if stage > 0 and (stage < 4 or input_shape[0] >= 64):
            x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        for j, filters in enumerate(filters_list, 1):
            prefix = f"{stage_name}_{j}"
            x = conv(
                x,
                filters,
                3,
                weight_decay=weight_decay,
                use_bias=True,
                name=f"{prefix}_conv",
            )
            x = batch_norm(x, name=f"{prefix}_bn")
            last = j == len(filters_list)
            x = layers.ReLU(name=stage_name if last else f"{prefix}_relu")(x)
    outputs = classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=name)


def vgg8(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """VGG8-BN (3.96M parameters at 100 classes).

    Example:

    ```python
    student = keras_kd.models.vgg8(num_classes=10)
    ```
    """
    return vgg(VGG8, num_classes, input_shape, weight_decay, name="vgg8")


def vgg13(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """VGG13-BN (9.46M parameters at 100 classes)."""
    return vgg(VGG13, num_classes, input_shape, weight_decay, name="vgg13")
