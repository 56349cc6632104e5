"""Subprocess helper of `tests/test_distribute.py`.

Devices must be configured before TensorFlow or JAX starts, so every check
that needs several devices runs in a fresh process:

    python tests/distribute_worker.py MODE OUT.json

Modes:
    mirrored: 2 logical CPUs, `tf.distribute.MirroredStrategy` against one
        device in the same process (one SGD step: loss, metrics, weights;
        BatchNorm with per-replica and with synchronized statistics).
    single: the one-device reference of `worker` (three full-batch steps).
    worker: one `MultiWorkerMirroredStrategy` worker (reads `TF_CONFIG`).
    jax: `keras.distribution.DataParallel` and `ModelParallel` on 2 host
        devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`)
        against one device in the same process.

Writes a JSON dict of measured values and max abs differences to OUT.json.
"""

import json
import os
import re
import sys

if __name__ == "__main__" and sys.argv[1] == "mirrored":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd.losses.base import per_sample_mean  # noqa: E402

BATCH = 16


class Projection(kd.losses.DistillationTerm):
    """`mean((f_s·W − f_t)²)`: a term with a trainable kernel, no BatchNorm."""

    def __init__(self, **kwargs):
        super().__init__(["t_features"], ["s_features"], **kwargs)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        self.kernel = self.add_weight(
            shape=(
                student_outputs_shape["s_features"][-1],
                teacher_outputs_shape[0]["t_features"][-1],
            ),
            initializer="glorot_uniform",
            name="kernel",
        )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        projected = ops.matmul(student_outputs["s_features"], self.kernel)
        return per_sample_mean(ops.square(projected - teacher_outputs[0]["t_features"]))


def tiny_net(prefix, width, batch_norm):
    """Conv → (BN) → ReLU → GAP ("<prefix>_features") → Dense logits."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}_conv")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_features")(h)
    outputs = keras.layers.Dense(
        10,
        name=f"{prefix}_logits",
        kernel_regularizer=keras.regularizers.L2(1e-2),
    )(h)
    return keras.Model(inputs, outputs, name=prefix)


def make_distiller(batch_norm):
    """Teacher, student and terms, all created in the current scope.

    Without BatchNorm the terms are Hinton KD and a `Projection`; with it,
    Hinton KD and `FeatureAlignment`, whose aligner holds a BatchNorm too.
    """
    keras.utils.set_random_seed(0)
    feature_term = (
        kd.losses.FeatureAlignment("t_features", "s_features")
        if batch_norm
        else Projection()
    )
    distiller = kd.Distiller(
        tiny_net("t", 8, batch_norm),
        tiny_net("s", 4, batch_norm),
        [kd.losses.LogitsDistillation(temperature=2.0), feature_term],
        distillation_loss_weights=[0.7, 3.0],
        student_loss_weight=0.3,
    )
    distiller.compile(
        keras.optimizers.SGD(0.5),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def data():
    """The first `BATCH` scikit-learn digits (8×8×1 in [0, 1]), with uneven
    sample weights."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:BATCH, ..., None] / 16.0).astype("float32")
    y = digits.target[:BATCH]
    sample_weight = np.linspace(0.5, 1.5, BATCH).astype("float32")
    return x, y, sample_weight


def train(distiller, epochs=1):
    """Full-batch SGD steps; returns the last step's logs."""
    x, y, sample_weight = data()
    history = distiller.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    return {name: values[-1] for name, values in history.history.items()}


def weights(model):
    """`{"<index> <path>": value}`, keyed by position and by the path without
    Keras' global name counters (unnamed layers of two identically built
    models get different suffixes, e.g. `dense_1` and `dense_5`)."""
    return {
        f"{i:02d} {re.sub(r'_[0-9]+(?=/)', '', v.path)}": ops.convert_to_numpy(v)
        for i, v in enumerate(model.weights)
    }


def max_diff(a, b):
    """Largest abs difference over matching dict entries."""
    assert set(a) == set(b), (sorted(a), sorted(b))
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


def mirrored():
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y, sample_weight = data()
    result = {"replicas": strategy.num_replicas_in_sync}

    single = make_distiller(batch_norm=False)
    initial = single.get_weights()
    half = BATCH // 2

    # One SGD step through fit, same global batch: the loss (per-replica
    # losses reduce to the one-device loss), the term metrics, the weights.
    with strategy.scope():
        replicated = make_distiller(batch_norm=False)
    replicated.set_weights(initial)
    logs_1, logs_2 = train(single), train(replicated)
    result["fit_logs"] = [logs_1, logs_2]
    result["fit_logs_diff"] = max_diff(logs_1, logs_2)
    result["metric_names"] = sorted(logs_1)
    result["weights_diff"] = max_diff(weights(single), weights(replicated))
    result["weights_moved"] = max_diff(
        weights(single), dict(zip(weights(single), initial))
    )

    # With BatchNorm, by default each replica normalises with its own half
    # batch, so the loss is the mean of the two half-batch losses (and the
    # moving statistics may drift apart across replicas).
    single = make_distiller(batch_norm=True)
    initial = single.get_weights()
    half_losses = []
    for i in range(2):
        single.set_weights(initial)
        part = slice(i * half, (i + 1) * half)
        half_losses.append(
            float(
                single.compute_loss(
                    x[part],
                    y[part],
                    single(x[part], training=True),
                    sample_weight[part],
                )
            )
        )
    with strategy.scope():
        replicated = make_distiller(batch_norm=True)
    replicated.set_weights(initial)
    logs = train(replicated)
    result["bn_loss_diff"] = abs(float(np.mean(half_losses)) - logs["loss"])
    result["bn_replica_diff"] = replica_diff(replicated)

    # Synchronized: statistics over the global batch, as on one device.
    # The same models, reset (on both replicas) to the initial weights.
    single.set_weights(initial)
    logs_1 = train(single)
    replicated.set_weights(initial)
    with kd.distribute.synchronized_batch_norm(replicated):
        logs_2 = train(replicated)
    result["bn_unsynced_vs_one_device"] = abs(logs["loss"] - logs_1["loss"])
    result["sync_bn_logs_diff"] = max_diff(logs_1, logs_2)
    result["sync_bn_weights_diff"] = max_diff(weights(single), weights(replicated))
    result["sync_bn_replica_diff"] = replica_diff(replicated)
    result["sync_bn_moved"] = max(
        float(np.max(np.abs(ops.convert_to_numpy(v) - w)))
        for v, w in zip(replicated.weights, initial)
        if "moving" in v.path
    )
    result["sync_bn_restored"] = not any(
        layer.synchronized
        for layer in replicated._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    return result


def replica_diff(distiller):
    """Largest difference between the 2 replicas' BN moving statistics."""
    return max(
        float(np.max(np.abs(v.value.values[0].numpy() - v.value.values[1].numpy())))
        for v in distiller.weights
        if "moving" in v.path
    )


def multi_worker(strategy=None):
    """Three full-batch steps; the worker's or the reference's results."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        distiller = make_distiller(batch_norm=False)
    logs = train(distiller, epochs=3)
    return {
        "replicas": strategy.num_replicas_in_sync,
        "logs": logs,
        "weights": {k: v.tolist() for k, v in weights(distiller).items()},
    }


def jax_distributions():
    devices = keras.distribution.list_devices("cpu")
    result = {"devices": len(devices)}
    single = make_distiller(batch_norm=True)
    initial = single.get_weights()
    logs_1 = train(single)
    weights_1 = weights(single)

    data_parallel = keras.distribution.DataParallel(devices=devices)
    with data_parallel.scope():
        replicated = make_distiller(batch_norm=True)
        replicated.set_weights(initial)
        logs_2 = train(replicated)
        # Variables replicated on both devices; batches split over them.
        result["data_parallel_variable_devices"] = len(
            replicated.student.weights[0].value.sharding.device_set
        )
        result["data_parallel_batch_axes"] = list(
            data_parallel.get_data_layout((BATCH, 8, 8, 1)).axes
        )
    result["data_parallel_logs"] = [logs_1, logs_2]
    result["data_parallel_logs_diff"] = max_diff(logs_1, logs_2)
    result["data_parallel_weights_diff"] = max_diff(weights_1, weights(replicated))
    result["weights_moved"] = max_diff(weights_1, dict(zip(weights_1, initial)))

    # A teacher too large for one device: shard its kernels' output
    # channels over the "model" axis; everything else is replicated.
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["t_.*conv.*/kernel"] = (None, None, None, "model")
    layout_map["t_.*logits.*/kernel"] = (None, "model")
    model_parallel = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    with model_parallel.scope():
        sharded = make_distiller(batch_norm=True)
        sharded.set_weights(initial)
        logs_3 = train(sharded)
    result["model_parallel_logs_diff"] = max_diff(logs_1, logs_3)
    result["model_parallel_weights_diff"] = max_diff(weights_1, weights(sharded))
    result["teacher_kernel_shards"] = {
        v.path: [list(s.data.shape) for s in v.value.addressable_shards]
        for v in sharded.teacher.weights
        if v.path.endswith("kernel")
    }
    result["teacher_kernel_shapes"] = {
        v.path: list(v.shape)
        for v in sharded.teacher.weights
        if v.path.endswith("kernel")
    }
    return result


if __name__ == "__main__":
    MODE, OUT = sys.argv[1], sys.argv[2]
    if MODE == "mirrored":
        output = mirrored()
    elif MODE == "single":
        output = multi_worker()
    elif MODE == "worker":
        import tensorflow as tf

        output = multi_worker(tf.distribute.MultiWorkerMirroredStrategy())
        output["task"] = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    elif MODE == "jax":
        output = jax_distributions()
    else:
        raise ValueError(f"Unknown mode {MODE!r}.")
    with open(OUT, "w") as f:
        json.dump(output, f)
    if MODE == "worker":
        # A MultiWorkerMirroredStrategy process lingers for ~40 s in its
        # gRPC/collective teardown after the work is done; the results are
        # written, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
