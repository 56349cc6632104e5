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
from keras import tree


from keras_kd.models.digits import digits_cnn_large, digits_cnn_small
from keras_kd.models.digits import fashion_cnn_large, fashion_cnn_small
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
    "fashion_cnn_large": fashion_cnn_large,
    "fashion_cnn_small": fashion_cnn_small,
}

_BLOCK_NAME = re.compile(r"block(\d+)_(\d+)$")
_STAGE_NAME = re.compile(r"stage(\d+)$")
_ACTIVATIONS = (layers.ReLU, layers.Activation)


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


def hint_layer_names(teacher, student, hint_layer=2):
    """The FitNets hint pair `(teacher_layer, student_layer)` of two zoo models.

    Index `hint_layer` of RepDistiller's feature list `[stem, stage1, ...,
    features]` (its `is_feat` outputs), in each model; the official default
    2 (RepDistiller `--hint_layer`, mdistiller `FITNET.HINT_LAYER`) is the
    second stage's output.

    Example:

    ```python
    hint_layer_names(keras_kd.models.resnet32x4(), keras_kd.models.resnet8x4())
    # ('stage2', 'stage2')
    ```
    """
    names = []
    for model in (teacher, student):
        features = stage_layer_names(model) + ["features"]
        if not -len(features) <= hint_layer < len(features):
            raise ValueError(
                f"hint_layer {hint_layer} is out of range for model "
                f"'{model.name}', whose feature list is {features}; pick an "
                f"index below {len(features)}."
            )
        names.append(features[hint_layer])
    return tuple(names)


def block_layer_names(model):
    """Names of the residual-block outputs of a model, in order.

    For a zoo model these are the layers named `block{stage}_{index}`: the
    ReLU after the sum for post-activation ResNets, and for pre-activation
    WRNs the sum after the BN-ReLU that follows it, as AFD's official WRN
    returns them. For any other model, a block output is each `Add` layer
    of the model, replaced by the activation layer (`ReLU`, `Activation`)
    that is the sum's only consumer (post-activation blocks) or that is the
    only consumer of a `BatchNormalization` reading the sum (pre-activation
    blocks). Raises a ValueError when the model has none. The candidates
    of `kd.losses.AttentionFeatureDistillation` and
    `kd.losses.RepresentativeTeacherKeys`.

    Example:

    ```python
    block_layer_names(keras_kd.models.resnet8x4())
    # ['block1_1', 'block2_1', 'block3_1']
    len(block_layer_names(keras_kd.models.wrn_40_2()))  # 18
    ```
    """
    blocks = sorted(
        (int(m.group(1)), int(m.group(2)), m.group(0))
        for m in (_BLOCK_NAME.match(layer.name) for layer in model.layers) if m
    )
    if blocks:
        return [name for _, _, name in blocks]
    consumers = {}
    for layer in model.layers:
        for tensor in tree.flatten(layer.input):
            consumers.setdefault(id(tensor), []).append(layer)

    def activation_after(layer):
        following = consumers.get(id(layer.output), [])
        if len(following) == 1 and isinstance(following[0], _ACTIVATIONS):
            return following[0]
        return None

    names = []
    for layer in model.layers:
        if not isinstance(layer, layers.Add):
            continue
        output = activation_after(layer)
        for consumer in consumers.get(id(layer.output), []):
            if output is None and isinstance(consumer,
                                             layers.BatchNormalization):
                output = activation_after(consumer)
        names.append((output or layer).name)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no keras.layers.Add layers, so no "
            f"residual blocks to list; name the feature layers explicitly."
        )
    return names


# Imported last: these finders build on stage_layer_names above.
from keras_kd.models.preactivation import batch_norm_before  # noqa: E402
from keras_kd.models.preactivation import preactivation_layer_names  # noqa: E402,E501
