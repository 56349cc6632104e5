"""Layer names of zoo models' stems, stages and residual blocks."""

import re

from keras import layers
from keras import tree

_BLOCK_NAME = re.compile(r"block(\d+)_(\d+)$")
_STAGE_NAME = re.compile(r"stage(\d+)$")
_ACTIVATIONS = (layers.ReLU, layers.Activation)


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
        (int(m.group(1)), m.group(0)) for m in map(_STAGE_NAME.match, names) if m
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
        for m in (_BLOCK_NAME.match(layer.name) for layer in model.layers)
        if m
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
            if output is None and isinstance(consumer, layers.BatchNormalization):
                output = activation_after(consumer)
        names.append((output or layer).name)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no keras.layers.Add layers, so no "
            f"residual blocks to list; name the feature layers explicitly."
        )
    return names
