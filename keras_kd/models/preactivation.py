"""Pre-ReLU taps and the batch norms before them, for overhaul distillation.

Example:

```python
teacher_taps = kd.models.preactivation_layer_names(teacher)
bn = kd.models.batch_norm_before(teacher, teacher_taps[0])
```
"""

import keras
from keras import layers

from keras_kd.models.layer_names import stage_layer_names


def preactivation_layer_names(model):
    """Names of the pre-ReLU outputs of a zoo model's stages (stem excluded).

    The point before each stage's ReLU, as overhaul feature distillation
    taps it: for post-activation nets (ResNet, VGG) the input of the ReLU
    that ends the stage (a ResNet's `block{s}_{n}_add`); for pre-activation
    nets (WRN) the batch norm that the stage output feeds
    (`block{s+1}_1_bn1`, then `final_bn`); else the stage output itself
    (MobileNetV2's linear bottlenecks).

    Example:

    ```python
    preactivation_layer_names(keras_kd.models.resnet8x4())
    # ['block1_1_add', 'block2_1_add', 'block3_1_add']
    ```
    """
    producers, consumers = _graph(model)
    names = []
    for name in stage_layer_names(model):
        if name == "stem":
            continue
        stage = model.get_layer(name)
        layer = _skip_identities(stage, producers)
        if _is_relu(layer):
            names.append(_producers_of(layer, producers)[0].name)
            continue
        norms = [
            c
            for c in consumers.get(id(stage.output), [])
            if isinstance(c, layers.BatchNormalization)
        ]
        names.append(norms[0].name if len(norms) == 1 else name)
    return names


def batch_norm_before(model, layer_name):
    """The `BatchNormalization` layer whose output makes `layer_name`.

    `layer_name` itself when it is a batch norm; for a residual sum
    (`keras.layers.Add`), the batch norm feeding its first input that is one
    (the residual branch's last batch norm in the zoo's ResNets, as the
    official OFD code takes it). Identity layers are looked through.
    Raises a ValueError for any other layer.

    Example:

    ```python
    batch_norm_before(keras_kd.models.resnet8x4(), "block1_1_add").name
    # 'block1_1_2_bn'
    ```
    """
    producers, _ = _graph(model)
    layer = _skip_identities(model.get_layer(layer_name), producers)
    if isinstance(layer, layers.BatchNormalization):
        return layer
    if isinstance(layer, layers.Add):
        for producer in _producers_of(layer, producers):
            producer = _skip_identities(producer, producers)
            if isinstance(producer, layers.BatchNormalization):
                return producer
    raise ValueError(
        f"Layer '{layer_name}' of model '{model.name}' "
        f"({type(layer).__name__}) is neither a BatchNormalization nor a "
        f"sum (Add) fed by one, so no batch norm gives the statistics of "
        f"its values before the ReLU. Tap the output of the batch norm "
        f"before the ReLU (kd.models.preactivation_layer_names lists "
        f"them for zoo models), or name the batch norms explicitly."
    )


def _graph(model):
    producers, consumers = {}, {}
    for layer in model.layers:
        producers[id(layer.output)] = layer
        for tensor in keras.tree.flatten(layer.input):
            consumers.setdefault(id(tensor), []).append(layer)
    return producers, consumers


def _producers_of(layer, producers):
    return [
        producers[id(t)] for t in keras.tree.flatten(layer.input) if id(t) in producers
    ]


def _skip_identities(layer, producers):
    while isinstance(layer, layers.Identity):
        layer = _producers_of(layer, producers)[0]
    return layer


def _is_relu(layer):
    if isinstance(layer, layers.ReLU):
        return True
    return (
        isinstance(layer, layers.Activation)
        and getattr(layer.activation, "__name__", "") == "relu"
    )
