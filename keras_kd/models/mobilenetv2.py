"""MobileNetV2 for CIFAR, as `mobile_half` in CRD/RepDistiller."""

import math

import keras
from keras import layers

from keras_kd.models.common import batch_norm
from keras_kd.models.common import classifier
from keras_kd.models.common import conv_bn
from keras_kd.models.common import depthwise_conv

# Groups of (expansion, channels, blocks, first stride), gathered into the
# stages at RepDistiller's feature taps f1..f4.
_STAGES = [
    [(1, 16, 1, 1), (6, 24, 2, 1)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]


def inverted_residual(x, filters, strides, expansion, weight_decay=0.0, name=None):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (+ input).

    The block's output is the layer `name`: the sum when the block keeps
    resolution and width, an identity layer after the projection otherwise.
    """
    residual = strides == 1 and x.shape[-1] == filters
    y = conv_bn(x, x.shape[-1] * expansion, 1, 1, weight_decay, name=f"{name}_expand")
    y = layers.ReLU(name=f"{name}_expand_relu")(y)
    y = depthwise_conv(y, strides, weight_decay, name=f"{name}_depthwise")
    y = batch_norm(y, name=f"{name}_depthwise_bn")
    y = layers.ReLU(name=f"{name}_depthwise_relu")(y)
    y = conv_bn(y, filters, 1, 1, weight_decay, name=f"{name}_project")
    if residual:
        return layers.Add(name=name)([x, y])
    return layers.Identity(name=name)(y)


def mobilenetv2(
    num_classes=100, input_shape=(32, 32, 3), width_multiplier=0.5, weight_decay=0.0
):
    """MobileNetV2 with a stride-2 stem for 32x32 inputs (0.81M at 100 classes).

    The default width multiplier 0.5 is RepDistiller's `mobile_half`. The
    stages group the inverted-residual blocks at the reference's feature
    taps: `stage1` (16x16), `stage2` (8x8), `stage3` (4x4), `stage4` (2x2).

    Example:

    ```python
    student = keras_kd.models.mobilenetv2(num_classes=10)
    ```
    """
    inputs = keras.Input(input_shape)
    x = conv_bn(inputs, int(32 * width_multiplier), 3, 2, weight_decay, name="stem")
    x = layers.ReLU(name="stem")(x)
    for stage, groups in enumerate(_STAGES, 1):
        index = 0
        for expansion, channels, blocks, strides in groups:
            for b in range(blocks):
                index += 1
                x = inverted_residual(
                    x,
                    int(channels * width_multiplier),
                    strides if b == 0 else 1,
                    expansion,
                    weight_decay,
                    name=f"block{stage}_{index}",
                )
        x = layers.Identity(name=f"stage{stage}")(x)
    last_channels = max(1280, 8 * math.ceil(160 * width_multiplier))
    x = conv_bn(x, last_channels, 1, 1, weight_decay, name="head")
    x = layers.ReLU(name="head_relu")(x)
    outputs = classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name="mobilenetv2")
