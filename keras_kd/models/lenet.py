"""LeNet-5 with batch norm, the Fashion-MNIST student of ReffAKD's code."""

import math

import keras
from keras import layers

from keras_kd.models.common import batch_norm
from keras_kd.models.common import l2


def _torch_init(fan_in):
    """PyTorch's default `Conv2d`/`Linear` initialisation for `fan_in`:
    kernel and bias uniform in `±1/sqrt(fan_in)`, as Keras initializers."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    return kernel, keras.initializers.RandomUniform(-bound, bound)


def _conv_stage(x, filters, weight_decay, name):
    """Conv 5x5 (valid, with bias) → BN → ReLU → 2x2 max pool (`name`)."""
    kernel, bias = _torch_init(x.shape[-1] * 25)
    x = layers.Conv2D(
        filters,
        5,
        padding="valid",
        kernel_initializer=kernel,
        bias_initializer=bias,
        kernel_regularizer=l2(weight_decay),
        name=f"{name}_conv",
    )(x)
    x = batch_norm(x, name=f"{name}_bn")
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(2, name=name)(x)


def _dense(x, units, weight_decay, name, **kwargs):
    kernel, bias = _torch_init(x.shape[-1])
    return layers.Dense(
        units,
        kernel_initializer=kernel,
        bias_initializer=bias,
        kernel_regularizer=l2(weight_decay),
        name=name,
        **kwargs,
    )(x)


def lenet5_bn(num_classes=10, input_shape=(32, 32, 1), weight_decay=0.0):
    """LeNet-5 with batch norm: ReffAKD's Fashion-MNIST student.

    As `LeNet5` of the official notebooks (JEKimLab/ReffAKD,
    `fashion_mnist/tinySLG_distillation.ipynb`, cell 10): stages
    `stage1` (conv 5x5 to 6 channels, valid, with bias, BN, ReLU, 2x2 max
    pool: 14x14 at 32x32 inputs) and `stage2` (the same to 16 channels:
    5x5), flattened (400 values at 32x32) into Dense 120 (`fc`), ReLU,
    Dense 84 (`fc1`), ReLU (`features`) and the float32 Dense classifier
    (`logits`, the notebook's `fc2`). Kernels
    and biases start as PyTorch's defaults (uniform in `±1/sqrt(fan_in)`).
    61,750 trainable parameters at 10 classes, as the PyTorch model (plus
    44 batch-norm statistics). The flattening is in Keras' HWC order, not
    PyTorch's CHW.

    Example:

    ```python
    student = keras_kd.models.lenet5_bn()  # 32x32x1 inputs, 10 classes.
    ```
    """
    inputs = keras.Input(input_shape)
    x = _conv_stage(inputs, 6, weight_decay, "stage1")
    x = _conv_stage(x, 16, weight_decay, "stage2")
    x = layers.Flatten(name="flatten")(x)
    x = _dense(x, 120, weight_decay, "fc", activation="relu")
    x = _dense(x, 84, weight_decay, "fc1")
    x = layers.ReLU(name="features")(x)
    outputs = _dense(x, num_classes, weight_decay, "logits", dtype="float32")
    return keras.Model(inputs, outputs, name="lenet5_bn")
