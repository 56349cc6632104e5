"""A recipe end-to-end on JAX with the NumPy input path (what runs where
TensorFlow is not installed): killed, rerun, the same weights."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = [
    "--nobaseline",
    "--teacher_epochs=1",
    "--epochs=8",
    "--export=",
    "--input_pipeline=numpy",
    "--augment",
    "--input_workers=2",
]


def _env():
    return dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="jax", PYTHONPATH=ROOT
    )


def _distill(out):
    command = [
        sys.executable,
        os.path.join(ROOT, "recipes", "distill.py"),
        *ARGS,
        f"--output_dir={out}",
    ]
    return command


@pytest.mark.slow
@pytest.mark.no_tensorflow
def test_numpy_pipeline_recipe_resumes_after_kill(tmp_path):
    full = str(tmp_path / "full")
    done = subprocess.run(
        _distill(full),
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(os.path.join(full, "flags.json")) as f:
        assert json.load(f)["input_pipeline"] == "numpy"

    out = str(tmp_path / "killed")
    process = subprocess.Popen(
        _distill(out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=ROOT,
    )
    metadata = os.path.join(out, "distilled", "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metadata):
            try:
                with open(metadata) as f:
                    if json.load(f)["epoch"] >= 3:
                        break
            except (ValueError, KeyError):
                pass  # Being written.
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(out, "results.json"))

    resumed = subprocess.run(
        _distill(out), capture_output=True, text=True, timeout=400, env=_env(), cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[distilled] resuming at epoch" in resumed.stdout
    a = keras.models.load_model(os.path.join(full, "student.keras"))
    b = keras.models.load_model(os.path.join(out, "student.keras"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
