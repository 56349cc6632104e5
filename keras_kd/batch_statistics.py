"""Teachers whose BatchNorm layers normalise with the batch's statistics.

OFD's official codes run the frozen teacher in PyTorch train mode
(clovaai/overhaul-distillation `CIFAR-100/train_with_distillation.py:75`,
mdistiller `mdistiller/distillers/OFD.py:114-121`): its BatchNorm layers
normalise each batch with that batch's mean and variance. A frozen Keras
model cannot do that (`BatchNormalization` uses batch statistics only when
`training and trainable`, and `training=True` would also turn dropout on).
`kd.Distiller(..., teacher_batch_statistics=True)` runs the teacher with
`training=False` while its BatchNorm layers use batch statistics: dropout
and every other layer stay in inference mode, and no variable is written
(the moving mean and variance keep their saved values).

Example:

```python
layers = batch_statistics.batch_norm_layers(teacher)
outputs = batch_statistics.run(tap, images, layers)  # {"logits": ...}
```
"""

import contextlib
import functools
import threading

import keras
from keras import ops

from keras_kd import teacher_inputs
from keras_kd._compat import flatten_layers
from keras_kd._compat import override_call

_LOCK = threading.Lock()
# Per layer (id): [open scopes, its own instance `call` or None];
# tf.distribute traces the replicas in threads.
_OPEN = {}


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` of `model`, nested ones too."""
    return [
        layer
        for layer in flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def run_teachers(taps, preprocessing, batch_norms, inputs, training):
    """Each teacher's tap on its own inputs (`kd.teacher_inputs`), in
    inference mode but for its `batch_norms` in training steps, outside the
    gradient; None for a teacher without a tap."""
    return [
        None
        if tap is None
        else run(
            tap, teacher_inputs.apply(transform, inputs), layers if training else []
        )
        for tap, transform, layers in zip(taps, preprocessing, batch_norms)
    ]


def run(tap, inputs, layers):
    """`tap(inputs, training=False)` with `layers` on batch statistics,
    outside the gradient."""
    with batch_statistics_scope(layers):
        outputs = tap(inputs, training=False)
    return keras.tree.map_structure(ops.stop_gradient, outputs)


@contextlib.contextmanager
def batch_statistics_scope(layers):
    """Within the scope, `layers` (BatchNorm layers) normalise with batch
    statistics whatever their `training` flag, and update nothing."""
    with _LOCK:
        for layer in layers:
            if id(layer) not in _OPEN:
                _OPEN[id(layer)] = [0, vars(layer).get("call")]
                override_call(layer, functools.partial(_batch_statistics, layer))
            _OPEN[id(layer)][0] += 1
    try:
        yield
    finally:
        with _LOCK:
            for layer in layers:
                _OPEN[id(layer)][0] -= 1
                if not _OPEN[id(layer)][0]:
                    override_call(layer, _OPEN.pop(id(layer))[1])


def _batch_statistics(layer, inputs, training=None, mask=None):
    """`layer`'s normalisation with the moments of `inputs` (over every axis
    but `layer.axis`; masked positions left out), in float32 as Keras' own."""
    x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
    axis = layer.axis % len(x.shape)
    axes = [i for i in range(len(x.shape)) if i != axis]
    if mask is None:
        mean, variance = ops.moments(x, axes, synchronized=layer.synchronized)
    else:
        weights = ops.cast(ops.expand_dims(mask, -1), x.dtype)
        weights = ops.broadcast_to(weights, ops.shape(x))
        count = ops.sum(weights, axes, keepdims=True) + keras.config.epsilon()
        mean = ops.sum(weights * x, axes, keepdims=True) / count
        variance = ops.sum(weights * ops.square(x - mean), axes, keepdims=True)
        mean, variance = ops.reshape(mean, (-1,)), ops.reshape(variance / count, (-1,))
    outputs = ops.batch_normalization(
        x,
        mean,
        variance,
        axis=axis,
        offset=ops.cast(layer.beta, x.dtype) if layer.center else None,
        scale=ops.cast(layer.gamma, x.dtype) if layer.scale else None,
        epsilon=layer.epsilon,
    )
    return ops.cast(outputs, layer.compute_dtype)
