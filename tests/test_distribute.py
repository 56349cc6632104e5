"""Scale-out: `keras_kd.distribute` and the Distiller on several devices.

The multi-device checks run `tests/distribute_worker.py` in subprocesses,
since devices must be configured before TensorFlow or JAX starts: 2 logical
CPUs for `tf.distribute.MirroredStrategy`, two local workers on loopback
ports for `MultiWorkerMirroredStrategy`, and 2 XLA host devices for
`keras.distribution` on JAX. Each compares one step (or three) on 2 devices
with the same global batch on one device.

BatchNorm: under `tf.distribute` each replica normalises with its own half
batch, so 2 replicas do *not* equal 1 device with BN in training. The
equality checks therefore use a BN-free student and term, or synchronized
BN (`kd.distribute.synchronized_batch_norm`); the unsynchronized case is
checked to be the mean of the two half-batch losses. On JAX,
`keras.distribution` computes BN statistics over the global batch, so the
BN models match one device as they are.
"""

import json
import os
import socket
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from helpers import small_cnn
from helpers import sparse_ce

import keras_kd as kd

pytestmark = pytest.mark.multi_backend

BACKEND = keras.backend.backend()
WORKER = os.path.join(os.path.dirname(__file__), "distribute_worker.py")
TIMEOUT = 300  # Seconds per subprocess; the machine may be busy.
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute needs TensorFlow."
)
jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="keras.distribution is tested on JAX."
)


def worker_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "XLA_FLAGS")}
    env.update(
        KERAS_BACKEND=BACKEND,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    return env


def run_worker(mode, tmp_path, **env):
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run(
        [sys.executable, WORKER, mode, str(out)],
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_strategy_from_flag_checks_the_flag_and_backend():
    assert kd.distribute.strategy_from_flag("none") is None
    with kd.distribute.scope(None):
        pass
    with pytest.raises(ValueError, match="must be one of"):
        kd.distribute.strategy_from_flag("horovod")
    # tf.distribute needs TensorFlow, keras.distribution JAX; torch has
    # neither.
    valid = {"tensorflow": {"mirrored", "multi_worker"}, "jax": {"data_parallel"}}.get(
        BACKEND, set()
    )
    right = sorted(valid - {"multi_worker"})  # Needs TF_CONFIG to start.
    for wrong in {"mirrored", "multi_worker", "data_parallel"} - valid:
        with pytest.raises(ValueError, match="KERAS_BACKEND"):
            kd.distribute.strategy_from_flag(wrong)
    for name in right:  # This process has one device.
        strategy = kd.distribute.strategy_from_flag(name)
        assert kd.distribute.num_replicas(strategy) == 1
        with kd.distribute.scope(strategy):
            pass


def test_scale_batch_and_learning_rate_linear_rule(capsys):
    assert kd.distribute.scale_batch_and_learning_rate(64, 0.1, 128) == (
        64,
        pytest.approx(0.05),
    )
    four = types.SimpleNamespace(num_replicas_in_sync=4)
    global_batch, lr = kd.distribute.scale_batch_and_learning_rate(32, 0.1, 256, four)
    assert global_batch == 128 and lr == pytest.approx(0.1 * 128 / 256)
    assert capsys.readouterr().out == ""  # Library code prints nothing.
    assert "Global batch 64 = 64 per replica × 1 replica(s)" in (
        kd.distribute.describe_scaling(64, 0.1, 128)
    )
    described = kd.distribute.describe_scaling(32, 0.1, 256, four)
    assert "Global batch 128 = 32 per replica × 4 replica(s)" in described
    assert "0.1 × 128 / 256 = 0.05" in described


def test_synchronized_batch_norm_is_scoped(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    distiller = kd.Distiller(
        small_cnn(8, name="teacher"),
        small_cnn(4, name="student"),
        [
            kd.losses.LogitsDistillation(),
            kd.losses.FeatureAlignment("stage2", "stage2"),
        ],
    )
    distiller.compile("sgd", sparse_ce())
    batch_norms = [
        layer
        for layer in distiller._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(batch_norms) == 5  # Teacher 2, student 2, aligner 1.
    distiller.make_train_function()
    assert distiller.train_function is not None
    with kd.distribute.synchronized_batch_norm(distiller):
        expected = BACKEND == "tensorflow"
        assert [layer.synchronized for layer in batch_norms] == [expected] * 5
        if BACKEND == "tensorflow":  # Traces with synchronized statistics.
            distiller.fit(x_train[:32], y_train[:32], batch_size=16, verbose=0)
    assert not any(layer.synchronized for layer in batch_norms)
    # On TensorFlow the train function traced with synchronized BN is gone.
    assert (distiller.train_function is None) == (BACKEND == "tensorflow")


@pytest.mark.slow
@tensorflow_only
def test_mirrored_two_replicas_match_one_device(tmp_path):
    r = run_worker("mirrored", tmp_path)
    assert r["replicas"] == 2
    assert r["metric_names"] == [
        "distillation_loss",
        "logits_distillation",
        "loss",
        "projection",
        "student_loss",
        "total_loss",
    ]
    # One SGD step through fit: the per-replica losses reduce to the
    # one-device loss of the global batch (and the term metrics agree);
    # the student, teacher and term (projection kernel) weights agree.
    assert r["fit_logs_diff"] < 1e-5, r["fit_logs"]
    assert r["weights_moved"] > 1e-2  # The step did change the weights.
    assert r["weights_diff"] < 1e-5
    # BN, unsynchronized: each replica normalises its own half batch, so
    # the loss is the mean of the half-batch losses and the replicas'
    # moving statistics drift apart.
    assert r["bn_loss_diff"] < 1e-5
    assert r["bn_replica_diff"] > 1e-4
    assert r["bn_unsynced_vs_one_device"] > 1e-3  # Hence not compared.
    # Synchronized BN (student, teacher and the FeatureAlignment aligner):
    # the step equals one device and the replicas stay identical.
    assert r["sync_bn_logs_diff"] < 1e-4
    assert r["sync_bn_weights_diff"] < 1e-4
    assert r["sync_bn_moved"] > 1e-2
    assert r["sync_bn_replica_diff"] == 0.0
    assert r["sync_bn_restored"]


@pytest.mark.slow  # Two TensorFlow processes with gRPC: 28-62 s on 2 cores.
@tensorflow_only
def test_multi_worker_matches_single_worker(tmp_path):
    import distribute_worker

    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [sys.executable, WORKER, "worker", str(tmp_path / f"{index}.json")],
                env=worker_env(TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        # The one-worker reference, in this process meanwhile.
        reference = distribute_worker.multi_worker()
        for worker in workers:
            output, _ = worker.communicate(timeout=TIMEOUT)
            assert worker.returncode == 0, output[-5000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert reference["replicas"] == 1
    for index in range(2):
        result = json.loads((tmp_path / f"{index}.json").read_text())
        assert result["replicas"] == 2 and result["task"] == index
        for name, value in reference["logs"].items():
            assert result["logs"][name] == pytest.approx(value, abs=1e-5)
        assert set(result["weights"]) == set(reference["weights"])
        for name, value in reference["weights"].items():
            np.testing.assert_allclose(
                result["weights"][name], value, atol=1e-5, err_msg=name
            )


@jax_only
def test_jax_data_parallel_and_model_parallel_match_one_device(tmp_path):
    r = run_worker(
        "jax", tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    assert r["devices"] == 2
    assert r["data_parallel_variable_devices"] == 2
    assert r["data_parallel_batch_axes"][0] == "batch"
    assert r["weights_moved"] > 1e-2
    # BN over the global batch, as on one device: no synchronization needed.
    assert r["data_parallel_logs_diff"] < 1e-5, r["data_parallel_logs"]
    assert r["data_parallel_weights_diff"] < 1e-5
    # The teacher's kernels are split over the "model" axis (output
    # channels halved on each device) and the step is unchanged.
    assert r["teacher_kernel_shapes"] == {
        "t_conv/kernel": [3, 3, 1, 8],
        "t_logits/kernel": [8, 10],
    }
    assert r["teacher_kernel_shards"] == {
        "t_conv/kernel": [[3, 3, 1, 4]] * 2,
        "t_logits/kernel": [[8, 5]] * 2,
    }
    assert r["model_parallel_logs_diff"] < 1e-5
    assert r["model_parallel_weights_diff"] < 1e-5
