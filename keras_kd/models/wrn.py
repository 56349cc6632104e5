"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016)."""

import keras
from keras import layers

from keras_kd.models.common import batch_norm
from keras_kd.models.common import classifier
from keras_kd.models.common import conv


def wide_block(x, filters, strides=1, weight_decay=0.0, name=None, input_name=None):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut.

    The sum is the layer `{name}_add`. The block's first ReLU activates its
    input, so it is named after the block that produced the input
    (`input_name`; `{name}_relu1` when None). When the block changes
    resolution or width the shortcut is a 1x1 convolution of the
    pre-activated input, as in the reference implementation.
    """
    y = batch_norm(x, name=f"{name}_bn1")
    y = layers.ReLU(name=input_name or f"{name}_relu1")(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(y, filters, 1, strides, weight_decay, name=f"{name}_shortcut")
    y = conv(y, filters, 3, strides, weight_decay, name=f"{name}_conv1")
    y = batch_norm(y, name=f"{name}_bn2")
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = conv(y, filters, 3, 1, weight_decay, name=f"{name}_conv2")
    return layers.Add(name=f"{name}_add")([shortcut, y])


def wrn(depth, width, num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """WRN-`depth`-`width`: widths 16, 16k, 32k, 64k, (depth - 4) / 6 blocks.

    `stem` is the first convolution; `stage{s}` the raw (pre-activation)
    output of each stage, as RepDistiller's feature list. `block{s}_{i}` is
    the block's output after the BN-ReLU that follows it: the next block's
    first BN-ReLU, or for the last block the final BN-ReLU (`final_bn`)
    before pooling. These are the features AFD's official WRN returns
    (`block_layer_names`); the raw sums are `block{s}_{i}_add`.

    Example:

    ```python
    teacher = keras_kd.models.wrn(28, 10, num_classes=10)
    ```
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, ...); got {depth}.")
    n = (depth - 4) // 6
    inputs = keras.Input(input_shape)
    x = conv(inputs, 16, 3, weight_decay=weight_decay, name="stem")
    previous = None
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width), 1):
        for index in range(1, n + 1):
            strides = 2 if stage > 1 and index == 1 else 1
            name = f"block{stage}_{index}"
            x = wide_block(
                x, filters, strides, weight_decay, name=name, input_name=previous
            )
            previous = name
        x = layers.Identity(name=f"stage{stage}")(x)
    x = batch_norm(x, name="final_bn")
    x = layers.ReLU(name=previous)(x)
    outputs = classifier(x, num_classes, weight_decay)
    return keras.Model(inputs, outputs, name=f"wrn_{depth}_{width}")


def wrn_16_2(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """WRN-16-2 (0.70M parameters at 100 classes)."""
    return wrn(16, 2, num_classes, input_shape, weight_decay)


def wrn_40_1(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """WRN-40-1 (0.57M parameters at 100 classes)."""
    return wrn(40, 1, num_classes, input_shape, weight_decay)


def wrn_40_2(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0):
    """WRN-40-2 (2.26M parameters at 100 classes)."""
    return wrn(40, 2, num_classes, input_shape, weight_decay)
