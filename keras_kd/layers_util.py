"""Finding the layers distillation terms read in functional models."""

from keras_kd import models


def residual_block_outputs(model):
    """Names of the residual-block outputs of a functional model, in order.

    `keras_kd.models.block_layer_names`, or a ValueError when there are
    none: each `keras.layers.Add`, or the activation that follows it
    (post-activation) or its batch norm (pre-activation). Candidates for
    `kd.losses.AttentionFeatureDistillation` and
    `kd.losses.RepresentativeTeacherKeys`.

    Example:

    ```python
    afd = kd.losses.AttentionFeatureDistillation(
        kd.layers_util.residual_block_outputs(teacher),
        kd.layers_util.residual_block_outputs(student))
    ```
    """
    names = models.block_layer_names(model)
    if not names:
        raise ValueError(
            f"Model '{model.name}' has no keras.layers.Add layers, so no "
            f"residual blocks to list; name the feature layers explicitly."
        )
    return names
