"""Building blocks shared by the model zoo.

Conventions follow the PyTorch CIFAR models the zoo mirrors (RepDistiller):
batch norm with momentum 0.9 and epsilon 1e-5, bias-free convolutions
followed by batch norm, He-normal kernels, and explicit symmetric zero
padding before strided convolutions so outputs line up with PyTorch's
`padding=1` (Keras' `"same"` pads only bottom/right when striding).
"""

import keras
from keras import layers


def l2(weight_decay):
    """Coupled L2 matching PyTorch SGD `weight_decay` (`wd / 2 * sum(w**2)`)."""
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def conv(
    x, filters, kernel_size, strides=1, weight_decay=0.0, use_bias=False, name=None
):
    """`kernel_size` x `kernel_size` convolution with PyTorch-style padding."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        kernel_regularizer=l2(weight_decay),
        name=name,
    )(x)


def depthwise_conv(x, strides=1, weight_decay=0.0, name=None):
    """3x3 depthwise convolution with PyTorch-style padding."""
    padding = "same"
    if strides > 1:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer="he_normal",
        depthwise_regularizer=l2(weight_decay),
        name=name,
    )(x)


def batch_norm(x, name=None):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def conv_bn(x, filters, kernel_size, strides=1, weight_decay=0.0, name=None):
    """Convolution then batch norm, named `{name}_conv` and `{name}_bn`."""
    x = conv(x, filters, kernel_size, strides, weight_decay, name=f"{name}_conv")
    return batch_norm(x, name=f"{name}_bn")


def classifier(x, num_classes, weight_decay=0.0):
    """Global average pool (`features`) and a float32 Dense (`logits`)."""
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return layers.Dense(
        num_classes,
        kernel_regularizer=l2(weight_decay),
        dtype="float32",
        name="logits",
    )(x)
