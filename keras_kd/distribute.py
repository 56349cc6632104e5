"""Distillation across devices: `tf.distribute` and `keras.distribution`.

The `Distiller` trains under either API unchanged: create the teacher(s),
the student and the Distiller (whose terms own their weights, e.g.
aligners) inside the strategy's scope, then `fit` on the global batch.

- TensorFlow backend: `tf.distribute.MirroredStrategy` (the devices of one
  machine) and `tf.distribute.MultiWorkerMirroredStrategy` (several
  machines, configured by `TF_CONFIG`). Each replica computes the loss of
  its share of the batch and the gradients are summed, so the Distiller's
  loss and one optimizer step equal those of one device on the whole batch.
  BatchNormalization normalises with each replica's own share unless made
  to use the global batch (`synchronized_batch_norm`). Keras 3.15's `fit`
  fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585); the
  Distiller includes `MultiWorkerFitMixin`, which works around it.
- JAX backend: `keras.distribution.DataParallel` (the batch is sharded, the
  variables replicated) or `keras.distribution.ModelParallel` (variables
  sharded too, e.g. a teacher too large for one device). Every batch, the
  last one included, must divide evenly over the batch axis's devices
  (`drop_remainder=True`, or arrays trimmed to a multiple of the batch):

```python
devices = keras.distribution.list_devices()
mesh = keras.distribution.DeviceMesh((1, len(devices)), ["batch", "model"],
                                     devices)
layout_map = keras.distribution.LayoutMap(mesh)
# Variable paths are "<layer name>/<variable>": name the teacher's layers so
# the keys select them (print `[v.path for v in teacher.weights]`).
layout_map["teacher_.*conv.*/kernel"] = (None, None, None, "model")
layout_map["teacher_.*dense.*/kernel"] = (None, "model")
with keras.distribution.ModelParallel(layout_map=layout_map,
                                      batch_dim_name="batch").scope():
    teacher = build_teacher()  # Its kernels' output channels are split.
    teacher.load_weights("teacher.weights.h5")
    distiller = kd.Distiller(teacher, student, ...)
    distiller.compile(...)
    distiller.fit(dataset)
```
"""

import contextlib

import keras

from keras_kd import _compat

STRATEGY_NAMES = ("none", "mirrored", "multi_worker", "data_parallel")


def strategy_from_flag(name):
    """The distribution for a `--distribution` flag value.

    Args:
        name: `"none"` (the default device), `"mirrored"` (every device of
            this machine, `tf.distribute.MirroredStrategy`), `"multi_worker"`
            (`tf.distribute.MultiWorkerMirroredStrategy`, from `TF_CONFIG`)
            or `"data_parallel"` (`keras.distribution.DataParallel` over
            every device; JAX backend).

    Returns:
        `None`, a `tf.distribute.Strategy` or a
        `keras.distribution.Distribution`; give it to `scope`.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"distribution must be one of {STRATEGY_NAMES}, got {name!r}.")
    if name == "none":
        return None
    backend = keras.backend.backend()
    if name == "data_parallel":
        if backend != "jax":
            raise ValueError(
                f"distribution='data_parallel' uses keras.distribution, "
                f"which needs KERAS_BACKEND=jax (the backend is {backend!r});"
                f" use 'mirrored' or 'multi_worker' with TensorFlow."
            )
        return keras.distribution.DataParallel()
    if backend != "tensorflow":
        raise ValueError(
            f"distribution={name!r} uses tf.distribute, which needs "
            f"KERAS_BACKEND=tensorflow (the backend is {backend!r}); use "
            f"'data_parallel' with JAX."
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def scope(strategy):
    """The context to build, compile and fit in (a no-op for `None`)."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def num_replicas(strategy):
    """How many replicas share each global batch."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):  # tf.distribute
        return strategy.num_replicas_in_sync
    return strategy.num_model_replicas  # keras.distribution


def scale_batch_and_learning_rate(
    batch_size, learning_rate, reference_batch_size, strategy=None
):
    """The global batch and its linearly scaled learning rate.

    Each replica keeps `batch_size` samples, so the global batch is
    `batch_size × replicas`, and the learning rate follows the linear
    scaling rule (Goyal et al., 2017):
    `learning_rate × global_batch / reference_batch_size`, where
    `learning_rate` is tuned for `reference_batch_size` (e.g. 0.1 at 128).
    Pair large global batches with a warm-up. `describe_scaling` says it
    in words.

    Returns:
        `(global_batch_size, scaled_learning_rate)`.
    """
    global_batch = batch_size * num_replicas(strategy)
    return global_batch, learning_rate * global_batch / reference_batch_size


def describe_scaling(batch_size, learning_rate, reference_batch_size, strategy=None):
    """One line on `scale_batch_and_learning_rate`'s result, to print."""
    global_batch, scaled = scale_batch_and_learning_rate(
        batch_size, learning_rate, reference_batch_size, strategy
    )
    return (
        f"Global batch {global_batch} = {batch_size} per replica × "
        f"{num_replicas(strategy)} replica(s); learning rate "
        f"{learning_rate:g} × {global_batch} / {reference_batch_size} = "
        f"{scaled:g} (linear scaling)."
    )


@contextlib.contextmanager
def synchronized_batch_norm(model):
    """Makes every BatchNormalization in `model` use the global batch.

    Under `tf.distribute` each replica normalises with the statistics of its
    own share of the batch (Keras' default), and in Keras 3 the moving
    mean and variance, mirrored variables without aggregation, drift apart
    across replicas (the first replica's are saved). Inside this context
    the statistics are all-reduced over the replicas, so a step on N
    replicas equals a step on one device and the moving statistics stay
    identical. `fit` called in the context traces its train function anew;
    on exit the layers' `synchronized` flag is restored (and the train
    function dropped), so the saved models stay loadable on every backend.
    No-op on other backends: `keras.distribution` already normalises over
    the global batch.

    Example:

    ```python
    with strategy.scope():
        distiller = kd.Distiller(teacher, student, terms)
        distiller.compile(...)
        with kd.distribute.synchronized_batch_norm(distiller):
            distiller.fit(dataset)
    ```
    """
    layers = []
    if keras.backend.backend() == "tensorflow":
        layers = [
            layer
            for layer in _compat.flatten_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
            and not layer.synchronized
        ]
    _set_synchronized(model, layers, True)
    try:
        yield
    finally:
        _set_synchronized(model, layers, False)


def _set_synchronized(model, layers, value):
    for layer in layers:
        layer.synchronized = value
    if layers and isinstance(model, keras.Model):
        model.train_function = None  # Retraced by the next `fit`.
