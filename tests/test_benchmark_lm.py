"""benchmarks/lm.py: the paired differences of its report, and a smoke run
end to end (three rows, one seed, tiny models)."""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import load_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paired_differences_against_kd():
    report = load_benchmark("lm_report")
    runs = [
        {"row": "kd", "seed": 0, "perplexity": 10.0},
        {"row": "kd", "seed": 1, "perplexity": 11.0},
        {"row": "jsd", "seed": 0, "perplexity": 9.5},
        {"row": "jsd", "seed": 1, "perplexity": 10.7},
        {"row": "jsd", "seed": 2, "perplexity": 9.0},  # No kd of seed 2.
        {"row": "topk", "seed": 0, "error": "Error: boom"},
        {"row": "student_alone", "seed": 0, "perplexity": 12.0},
        {"row": "student_alone", "seed": 1, "perplexity": 10.0},
    ]
    mean, std, lower, n = report.paired_difference(runs, "jsd")
    assert (lower, n) == (2, 2) and math.isclose(mean, -0.4)
    assert math.isclose(std, math.sqrt(0.02))
    rows = ["student_alone", "kd", "jsd", "topk"]
    summary = {s["row"]: s for s in report.summarize(runs, rows)}
    assert summary["kd"]["paired_vs_kd"] is None
    assert summary["student_alone"]["paired_vs_student_alone"] is None
    mean, std, lower, n = summary["kd"]["paired_vs_student_alone"]
    assert (lower, n) == (1, 2) and math.isclose(mean, -0.5)  # -2.0, +1.0
    assert math.isclose(std, math.sqrt(4.5))
    assert math.isclose(summary["jsd"]["perplexity_mean"], (9.5 + 10.7 + 9.0) / 3)
    assert summary["topk"]["perplexity_mean"] is None
    assert summary["topk"]["failed"] == ["Error: boom"]


@pytest.mark.slow
def test_smoke_run_writes_the_report(tmp_path):
    pytest.importorskip("keras_hub")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "lm.py"),
        "--smoke",
        "--seeds=0,1",
        "--rows=student_alone,kd,keras_distillation",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--output_dir={tmp_path}",
        "--throughput_steps=3",
        "--throughput_repeats=1",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (stem,) = {p[: -len(".json")] for p in os.listdir(tmp_path) if p.endswith(".json")}
    assert stem.startswith("lm_smoke_")
    with open(tmp_path / f"{stem}.json") as f:
        report = json.load(f)
    rows = {s["row"]: s for s in report["summary"]}
    assert set(rows) == {"student_alone", "kd", "keras_distillation"}
    for entry in rows.values():
        assert entry["perplexity_mean"] > 1 and not entry["failed"]
        assert entry["seeds"] == [0, 1]
    # Seed 0's kd run trains the teacher; seed 1's loads that file.
    with open(tmp_path / "runs" / "seed1" / "kd" / "results.json") as f:
        seed1 = json.load(f)
    assert seed1["models"]["teacher"]["loaded_from"] == str(
        tmp_path / "runs" / "seed0" / "kd" / "teacher.keras"
    )
    assert len(report["throughput"]["rows"]) == 2
    assert len(report["throughput"]["loadavg_before"]) == 3
    with open(tmp_path / f"{stem}.md") as f:
        assert "| keras_distillation |" in f.read()
    # Rerun: every row is read back, nothing is trained again.
    again = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    assert again.returncode == 0 and "[seed 0]" not in again.stdout
