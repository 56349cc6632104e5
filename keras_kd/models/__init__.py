"""Model zoo: CIFAR ResNets, WRNs, VGG, MobileNetV2 and small digits CNNs.

Every zoo model is a functional `keras.Model` returning logits, with its
intermediate outputs under stable layer names:

- `stem`: the first convolution's output;
- `stage1`, `stage2`, ... : each stage's output (`stage_layer_names`);
- `block{stage}_{index}`: each residual block's output (`block_layer_names`);
- `features`: the pooled vector before the classifier;
- `logits`: the float32 Dense classifier.
"""

import re

from keras import layers

from keras_kd import _compat

from keras_kd.models.digits import digits_cnn_large, digits_cnn_small
from keras_kd.models.mobilenetv2 import mobilenetv2
from keras_kd.models.resnet import (
    cifar_resnet,
    resnet8x4,
    resnet20,
    resnet32,
    resnet32x4,
    resnet56,
    resnet110,
)
from keras_kd.models.vgg import vgg8, vgg13
from keras_kd.models.wrn import wrn, wrn_16_2, wrn_40_1, wrn_40_2

MODELS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "mobilenetv2": mobilenetv2,
    "digits_cnn_large": digits_cnn_large,
    "digits_cnn_small": digits_cnn_small,
}

_BLOCK_NAME = re.compile(r"block(\d+)_(\d+)$")
_STAGE_NAME = re.compile(r"stage(\d+)$")


def get(name, num_classes=None, input_shape=None, **kwargs):
    """Builds the zoo model `name`; unset arguments keep the model's defaults.

    Example:

    ```python
    teacher = keras_kd.models.get("resnet32x4", num_classes=10)
    student = keras_kd.models.get("resnet8x4", num_classes=10,
                                  weight_decay=5e-4)
    ```
    """
    if name not in MODELS:
        raise ValueError(
            f"Unknown model '{name}'. Available: {', '.join(sorted(MODELS))}."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    return MODELS[name](**kwargs)


def stage_layer_names(model):
    """Names of `stem` and the `stage{i}` layers of a zoo model, in order.

    Example:

    ```python
    stage_layer_names(keras_kd.models.resnet20())
    # ['stem', 'stage1', 'stage2', 'stage3']
    ```
    """
    names = {layer.name for layer in model.layers}
    stages = sorted(
        (int(m.group(1)), m.group(0))
        for m in map(_STAGE_NAME.match, names) if m
    )
    if not stages:
        raise ValueError(
            f"Model '{model.name}' has no layers named 'stage1', 'stage2', ...; "
            f"stage names are defined for keras_kd.models zoo models."
        )
    return ["stem"] * ("stem" in names) + [name for _, name in stages]


def block_layer_names(model):
    """Names of the residual-block outputs of a model, in order.

    For a zoo model these are the layers named `block{stage}_{index}`. For
    any other model, a block output is each `Add` layer of the model, or the
    activation layer (`ReLU`, `Activation`) that is the sum's only consumer
    when there is one (post-activation blocks). Raises a ValueError when
    the model has none. The candidates of
    `kd.losses.AttentionFeatureDistillation` and
    `kd.losses.RepresentativeTeacherKeys`.

    Example:

    ```python
    block_layer_names(keras_kd.models.resnet8x4())
    # ['block1_1', 'block2_1', 'block3_1']
    ```
    """
    blocks = sorted(
        (int(m.group(1)), int(m.group(2)), m.group(0))
        for m in (_BLOCK_NAME.match(layer.name) for layer in model.layers) if m
    )
    if blocks:
        return [name for _, _, name in blocks]
    own_layers = set(map(id, model.layers))
    names = []
    for layer in model.layers:
        if not isinstance(layer, layers.Add):
            continue
        consumers = [
            consumer for consumer in _compat.consumer_layers(layer)
            if id(consumer) in own_layers
        ]
        if len(consumers) == 1 and isinstance(
            consumers[0], (layers.ReLU, layers.Activation)
        ):
            layer = consumers[0]
        names.append(layer.name)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no keras.layers.Add layers, so no "
            f"residual blocks to list; name the feature layers explicitly."
        )
    return names
