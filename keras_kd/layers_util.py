"""Finding the layers distillation terms read in functional models."""

import keras
from keras import layers


def residual_block_outputs(model):
    """Names of the residual-block outputs of a functional model, in order.

    A block output is each `keras.layers.Add` layer of the model, or the
    activation layer (`ReLU`, `Activation`) that follows it when that layer
    is the sum's only consumer (post-activation blocks). Candidates for
    `kd.losses.AttentionFeatureDistillation` and
    `kd.losses.RepresentativeTeacherKeys`.

    Example:

    ```python
    afd = kd.losses.AttentionFeatureDistillation(
        kd.layers_util.residual_block_outputs(teacher),
        kd.layers_util.residual_block_outputs(student))
    ```
    """
    consumers = {}
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.input):
            consumers.setdefault(id(tensor), []).append(layer)
    names = []
    for layer in model.layers:
        if not isinstance(layer, layers.Add):
            continue
        following = consumers.get(id(layer.output), [])
        if len(following) == 1 and isinstance(
            following[0], (layers.ReLU, layers.Activation)
        ):
            layer = following[0]
        names.append(layer.name)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no keras.layers.Add layers, so no "
            f"residual blocks to list; name the feature layers explicitly."
        )
    return names
