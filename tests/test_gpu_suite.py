"""benchmarks/gpu_suite.py --smoke: every row and run of the GPU suite on
tiny settings (CPU, JAX, no TensorFlow needed), so the script works the
first time it meets a GPU."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.no_tensorflow
@pytest.mark.gpu_smoke
def test_gpu_suite_smoke(tmp_path):
    env = dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu_suite.py"),
            "--smoke",
            f"--output_dir={tmp_path}",
            f"--data_dir={tmp_path / 'absent'}",
        ],  # Synthetic JPEGs.
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    with open(tmp_path / path) as f:
        report = json.load(f)
    assert os.path.exists(tmp_path / path.replace(".json", ".md"))
    rows = {(r["policy"], r["config"]): r for r in report["throughput"]}
    torch = any(
        r["config"] == "torch_eager" and "skipped" not in r
        for r in report["throughput"]
    )
    every = (
        "student",
        "teacher_forward",
        "fused_limit",
        "keras_logits",
        "keras_logits_feature",
        "kd_logits",
        "kd_logits_feature",
        "kd_fa",
        "kd_at",
        "kd_afd",
        "kd_rtk",
        "kd_dlkd",
        "kd_logits_augment",
        "student_replay",
        "kd_recorded",
        "record",
    )
    some = (
        "student",
        "teacher_forward",
        "fused_limit",
        "kd_logits",
        "kd_logits_augment",
        "student_replay",
        "kd_recorded",
        "record",
    )  # --smoke's mixed_bfloat16 rows.
    for policy, configs in (("float32", every), ("mixed_bfloat16", some)):
        for config in configs:
            row = rows[(policy, config)]
            assert "skipped" not in row, (policy, config, row)
            assert row["images_per_s"]["median"] > 0
            if config == "record":  # One timed recording, and its bytes.
                assert row["bytes_per_example_epoch"] > 0
            else:
                assert len(row["per_repeat_images_per_s"]) == 2
        if torch:
            assert "images_per_s" in rows[(policy, "torch_eager")]
    runs = [r["run"] for r in report["accuracy"]["runs"]]
    assert runs == ["teacher", "student", "keras_kd", "kd_kd", "kd_fa"]
    for run in report["accuracy"]["runs"]:
        assert "failed" not in run, run
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["wall_s"] > 0
    assert report["accuracy"]["jpeg_decoder"] in ("Pillow", "tf.io")
    names = [t["name"] for t in report["targets"]]
    assert "kd logits KD vs fused limit (float32)" in names
    assert "kd_kd test accuracy" in names
    assert (
        "recorded-teacher KD vs student alone (same replayed stream) (float32)"
    ) in names
