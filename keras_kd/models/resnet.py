"""CIFAR ResNets (He et al. 2016, post-activation BasicBlock, depth 6n+2)."""

import keras
from keras import layers

from keras_kd.models.common import batch_norm
from keras_kd.models.common import classifier
from keras_kd.models.common import conv
from keras_kd.models.common import conv_bn


def basic_block(x, filters, strides=1, weight_decay=0.0, name=None):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (named `name`).

    The shortcut is a 1x1 convolution and batch norm when the block changes
    resolution or width, the identity otherwise. The sum is the layer
    `{name}_add`.
    """
    shortcut = x
    y = conv_bn(x, filters, 3, strides, weight_decay, name=f"{name}_1")
    y = layers.ReLU(name=f"{name}_1_relu")(y)
    y = conv_bn(y, filters, 3, 1, weight_decay, name=f"{name}_2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(
            x, filters, 1, strides, weight_decay, name=f"{name}_shortcut"
        )
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=name)(y)


def residual_net(
    blocks_per_stage,
    widths,
    stage_strides,
    num_classes,
    input_shape,
    weight_decay=0.0,
    name="resnet",
):
    """Stem conv3x3-BN-ReLU, stages of `basic_block`s, pooling, classifier.

    `widths` is `[stem, stage1, stage2, ...]`; `stage_strides` has one stride
    per stage. Outputs are named `stem`, `block{stage}_{index}`,
    `stage{stage}`, `features` and `logits`.
    """
    inputs = keras.Input(input_shape)
    x = conv(inputs, widths[0], 3, weight_decay=weight_decay, name="stem_conv")
    x = batch_norm(x, name="stem_bn")
    x = layers.ReLU(name="stem")(x)
    for stage, (filters, strides) in enumerate(zip(widths[1:], stage_strides), 1):
        for index in range(1, blocks_per_stage + 1):
            x = basic_block(
                x,
                filters,
                strides if index == 1 else 1,
                weight_decay,
                name=f"block{stage}_{index}",
            )
        x = layers.Identity(name=f"stage{stage}")(x)
    outputs = classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=name)


def cifar_resnet(
    depth, width=1, num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0
):
    """CIFAR ResNet-`depth` with widths `16w, 16w, 32w, 64w` (depth = 6n+2).

    Example:

    ```python
    model = cifar_resnet(44, num_classes=10)
    ```
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...); got {depth}."
        )
    n = (depth - 2) // 6
    widths = [16 * width, 16 * width, 32 * width, 64 * width]
    return residual_net(
        n,
        widths,
        (1, 2, 2),
        num_classes,
        input_shape,
        weight_decay,
        name=f"resnet{depth}",
    )


def _x4(n, depth, num_classes, input_shape, weight_decay):
    return residual_net(
        n,
        [32, 64, 128, 256],
        (1, 2, 2),
        num_classes,
        input_shape,
        weight_decay,
        name=f"resnet{depth}x4",
    )


def resnet20(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """CIFAR ResNet-20 (0.28M parameters at 100 classes).

    Example:

    ```python
    model = keras_kd.models.resnet20(num_classes=10)
    logits = model(np.zeros((2, 32, 32, 3)))  # (2, 10)
    ```
    """
    return cifar_resnet(20, 1, num_classes, input_shape, weight_decay)


def resnet32(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """CIFAR ResNet-32 (0.47M parameters at 100 classes)."""
    return cifar_resnet(32, 1, num_classes, input_shape, weight_decay)


def resnet56(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """CIFAR ResNet-56 (0.86M parameters at 100 classes)."""
    return cifar_resnet(56, 1, num_classes, input_shape, weight_decay)


def resnet110(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """CIFAR ResNet-110 (1.74M parameters at 100 classes)."""
    return cifar_resnet(110, 1, num_classes, input_shape, weight_decay)


def resnet8x4(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """ResNet-8x4 of CRD: one block per stage, widths 32/64/128/256 (1.23M)."""
    return _x4(1, 8, num_classes, input_shape, weight_decay)


def resnet32x4(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """ResNet-32x4 of CRD: five blocks per stage, widths 32/64/128/256 (7.43M)."""
    return _x4(5, 32, num_classes, input_shape, weight_decay)
