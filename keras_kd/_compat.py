"""Every private Keras / TensorFlow access of keras_kd, in one place.

Each name says which public API it stands in for and why that is not
enough. Nothing else in keras_kd imports `keras.src`.
"""

import keras

# Scaling of a loss by the number of replicas under tf.distribute, the
# inverse of what Keras' `compile_loss` applies; no public API
# (`keras.losses.Loss` applies it internally only).
from keras.src.losses.loss import scale_loss_for_distribution  # noqa: F401
from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401,E501

# TensorFlow, imported on first use (as Keras' own code does), so that
# `import keras_kd` works without TensorFlow on the JAX/torch backends.
# Public alternative: `import tensorflow` at each use, which fails at
# import time where TensorFlow is absent.
from keras.src.utils.module_utils import tensorflow  # noqa: F401

# Keeps a layer attribute from being tracked (teachers held by terms);
# public API: none (`keras.Layer` tracks every attribute it is given).
from keras.src.utils.tracking import DotNotTrackScope  # noqa: F401


# `keras.layers.Layer`'s own recursive layer walk (every nested layer, once);
# public API: `model.layers` lists direct children only.
def flatten_layers(model, include_self=True, recursive=True):
    return list(model._flatten_layers(include_self=include_self, recursive=recursive))


# The layers a layer's output feeds, from the functional graph; public
# API: none (`keras.Model` exposes no consumers of a layer).
def consumer_layers(layer):
    return [node.operation for node in layer._outbound_nodes]


# The input signature Keras' exporter derives from a built model; public
# API: `model.export` computes it internally only.
def get_input_signature(model):
    from keras.src.export.export_utils import get_input_signature

    return get_input_signature(model)


# Keras' layer-name convention (CamelCase → snake_case) for default term
# names; public API: none.
from keras.src.utils.naming import to_snake_case  # noqa: E402,F401


# The loss given to `compile(loss=...)`, as Keras' `compute_loss` calls it
# (with its reduction and distribution scaling); public API: `compute_loss`
# also adds regularisation losses, which the Distiller adds once itself.
def compiled_loss(model):
    return model._compile_loss


# Multi-worker `fit` under tf.distribute (keras-team/keras#20585).
class MultiWorkerFitMixin:
    """Lets a `keras.Model`'s `fit`/`evaluate` run under
    `tf.distribute.MultiWorkerMirroredStrategy` (Keras 3.15).

    Keras' TensorFlow trainer has two faults in multi-worker mode
    (keras-team/keras#20585): it all-reduces the first batch with one
    `strategy.reduce` call on a nested structure (rejected by the collective
    strategy) only to read its shapes, and it reduces each scalar log with
    `strategy.reduce("MEAN", value, axis=0)`, which needs an axis. This mixin
    reads the shapes from this worker's share of the batch, and gives each
    log a leading axis of length 1 in multi-worker mode (the logs are
    synchronized metric results, so their mean over workers is the value).
    Other strategies and backends are unaffected. `kd.Distiller` uses it:

    ```python
    class Distiller(MultiWorkerFitMixin, keras.Model): ...
    ```
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Only called by the TensorFlow trainer.
        if iterator is not None and self._distribute_strategy is not None:
            import tensorflow as tf

            local_results = self._distribute_strategy.experimental_local_results
            for _, _, batches in iterator:
                batch = next(batches)
                break
            data_batch = keras.tree.map_structure(
                lambda v: (
                    local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        if in_multi_worker_mode(self):
            results = keras.tree.map_structure(
                lambda v: keras.ops.expand_dims(v, 0), results
            )
        return results


def in_multi_worker_mode(model):
    """Whether `model` runs under a multi-worker tf.distribute strategy
    (`tf.distribute.Strategy.extended._in_multi_worker_mode`, no public
    equivalent)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = getattr(model, "_distribute_strategy", None)
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


# Runs `fn` (None: the class's own) in place of one layer's `call`: Keras'
# `Operation.__call__` looks `self.call` up at each call. Public API: none
# (`training=` reaches every layer of a model alike, so a frozen teacher's
# BatchNorm cannot use batch statistics while its dropout stays off).
def override_call(layer, fn):
    if fn is None:
        vars(layer).pop("call", None)
    else:
        vars(layer)["call"] = fn


# The layer that produced a symbolic tensor of a functional model; public
# API: walking `model.layers` for the one whose `output` is the tensor,
# which is ambiguous for shared layers.
def producing_layer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None
