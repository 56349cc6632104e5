"""benchmarks/gpu_suite.py on CPU: the --smoke run of every row and run on
tiny settings (JAX, no TensorFlow needed), so the script works the first
time it meets a GPU; a budget cut by a fake clock; a row and a run that
raise; the PyTorch rows; the budget's estimates and overhead arithmetic."""

import importlib
import json
import math
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny zoo CNN (5k weights) keeps the in-process runs to seconds.
TINY = ["--smoke", "--teacher=digits_cnn_small", "--student=digits_cnn_small"]


@pytest.fixture
def suite(tmp_path):
    """gpu_suite, imported in this process; its clock and the dtype policy
    are restored afterwards."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    module = importlib.import_module("gpu_suite")
    tp = importlib.import_module("throughput_rows")
    try:
        yield module
    finally:
        tp.use_clock("wall")
        keras.mixed_precision.set_global_policy("float32")
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


class TickClock:
    """A fake clock: each reading is `tick` seconds after the last."""

    def __init__(self, tick=1.0):
        self.t, self.tick = 0.0, tick

    def __call__(self):
        self.t += self.tick
        return self.t


def _report(tmp_path, part):
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(f"_{part}_smoke.json")]
    with open(tmp_path / path) as f:
        report = json.load(f)
    assert os.path.exists(tmp_path / path.replace(".json", ".md"))
    return report


@pytest.mark.slow  # Runs in CI's TF-free step (no_tensorflow).
@pytest.mark.no_tensorflow
def test_a_budget_cut_keeps_the_rows_done_and_lists_the_skipped(suite, tmp_path):
    importlib.import_module("throughput_rows").use_clock(TickClock(1.0))
    lines = []
    rows = "student,teacher_forward,kd_logits,kd_logits_feature,keras_logits"
    suite.main(
        TINY
        + ["--part=throughput", "--policies=float32", f"--rows={rows}"]
        + ["--budget_s=60", "--first_row_s=5", f"--output_dir={tmp_path}"],
        log=lines.append,
    )
    report = _report(tmp_path, "throughput")
    done = [r["config"] for r in report["throughput"] if "images_per_s" in r]
    skipped = [r["config"] for r in report["throughput"] if "skipped" in r]
    assert done[0] == "student" and "keras_logits" in skipped, (done, skipped)
    assert all("budget" in r["skipped"] for r in report["throughput"] if "skipped" in r)
    listed = [s["what"] for s in report["budget"]["skipped"]]
    assert listed == [f"throughput float32 {c}" for c in skipped]
    assert report["budget"]["budget_s"] == 60
    assert set(report["parts_s"]) == {"preflight", "throughput"}
    # Each row printed a line as it was done, and the summary came last.
    assert any(line.startswith("[float32] student: ") for line in lines)
    assert lines[-2].startswith("part times: preflight ")
    row = report["throughput"][0]
    assert row["overhead"]["steps"] == [
        row["steps_per_call"],
        2 * row["steps_per_call"],
    ]


@pytest.mark.slow  # Runs in CI's TF-free step (no_tensorflow).
@pytest.mark.no_tensorflow
def test_a_row_and_a_run_that_raise_are_recorded_and_the_call_goes_on(
    suite, tmp_path, monkeypatch
):
    throughput = importlib.import_module("gpu_suite_throughput")
    accuracy = importlib.import_module("gpu_suite_accuracy")
    build_row = throughput.build_row

    def build(config, models, policy):
        runner = build_row(config, models, policy)
        if config != "teacher_forward":
            return runner
        calls = []

        def diverging(x, y, batch_size):  # Warms up, then fails.
            calls.append(1)
            if len(calls) > 1:
                raise FloatingPointError("loss is nan at step 3")
            return runner(x, y, batch_size)

        return diverging

    def teacher_run(args, data, budget):
        raise RuntimeError("the teacher broke")

    monkeypatch.setattr(throughput, "build_row", build)
    monkeypatch.setattr(accuracy, "_teacher_run", teacher_run)
    suite.main(
        TINY
        + ["--policies=float32", "--rows=student,teacher_forward,kd_logits"]
        + ["--runs=kd_kd,student", f"--output_dir={tmp_path}", "--data_dir=absent"],
        log=lambda _: None,
    )
    report = _report(tmp_path, "all")
    rows = {r["config"]: r for r in report["throughput"]}
    assert rows["teacher_forward"]["failed"] == (
        "FloatingPointError: loss is nan at step 3"
    )
    assert rows["student"]["images_per_s"]["median"] > 0
    assert rows["kd_logits"]["images_per_s"]["median"] > 0
    assert "fused_limit" not in rows
    runs = {r["run"]: r for r in report["accuracy"]["runs"]}
    assert runs["teacher"]["failed"] == "RuntimeError: the teacher broke"
    assert "no trained teacher" in runs["kd_kd"]["skipped"]
    assert 0.0 <= runs["student"]["test_accuracy"] <= 1.0
    assert list(runs) == ["teacher", "kd_kd", "student"]
    assert {t["name"]: t["met"] for t in report["targets"]}[
        "kd_kd test accuracy"
    ] is False


@pytest.mark.no_tensorflow
def test_a_failing_preflight_stops_the_call_in_seconds(suite, tmp_path):
    lines = []
    with pytest.raises(SystemExit) as stop:
        suite.main(
            ["--smoke", "--student=no_such_model", f"--output_dir={tmp_path}"],
            log=lines.append,
        )
    assert stop.value.code == 3
    assert lines[0].startswith("versions: python ") and "keras" in lines[0]
    assert "the preflight failed" in lines[-1]
    report = _report(tmp_path, "all")
    assert "no_such_model" in report["preflight"]["failed"]
    assert "throughput" not in report and "accuracy" not in report


@pytest.mark.multi_backend
def test_torch_rows_run_on_cpu(suite, tmp_path):
    pytest.importorskip("torch")
    if keras.backend.backend() == "tensorflow":  # CI: the PyTorch step.
        pytest.skip("the GPU machine runs the PyTorch rows beside JAX, not TF")
    suite.main(
        ["--smoke", "--part=throughput", "--rows=torch_eager", "--batch_size=8"]
        + [f"--output_dir={tmp_path}"],
        log=lambda _: None,
    )
    rows = _report(tmp_path, "throughput")["throughput"]
    assert [(r["policy"], r["config"]) for r in rows] == [
        ("float32", "torch_eager"),
        ("mixed_bfloat16", "torch_eager"),
    ]
    for row in rows:
        assert row["images_per_s"]["median"] > 0, row
        assert row["cudnn_benchmark"] is False  # No CUDA here.
        assert row["overhead"]["steps"] == [
            row["steps_per_call"],
            2 * row["steps_per_call"],
        ]


@pytest.mark.no_tensorflow
def test_estimates_are_conservative_until_measured(suite):
    gb = importlib.import_module("gpu_suite_budget")
    estimates = gb.Estimates(first_s=60)
    assert estimates.estimate("kd", "kd_fa") is None  # The caller's prior.
    estimates.add("student", "student", 10.0)
    assert estimates.estimate("kd", "kd_fa") == 60  # At least first_s.
    estimates.add("kd", "kd_logits", 50.0)
    assert estimates.estimate("kd", "kd_fa") == 75  # 1.5x the kind's.
    assert estimates.estimate("kd", "kd_logits") == 60  # 1.2x its own.


@pytest.mark.no_tensorflow
def test_overhead_arithmetic_and_steps_per_call(suite):
    gb = importlib.import_module("gpu_suite_budget")
    # 50 ms per call, 2 ms per step: 20 steps take 90 ms, 40 take 130 ms.
    overhead, step = gb.call_overhead(20, 0.09, 0.13)
    assert math.isclose(overhead, 0.05) and math.isclose(step, 0.002)
    n = gb.steps_for(overhead, step, 0.02, 20, 10_000)
    assert n == 1563 and gb.overhead_fraction(overhead, step, n) < 0.02
    assert gb.steps_for(overhead, step, 0.02, 20, 400) == 400  # Capped.
    assert gb.steps_for(-0.01, step, 0.02, 20, 400) == 20  # Noise: low.


@pytest.mark.no_tensorflow
@pytest.mark.parametrize("budget_s", [60, 30])
def test_budget_guard_stops_a_run_only_when_it_would_overrun(suite, budget_s):
    tp = importlib.import_module("throughput_rows")
    gb = importlib.import_module("gpu_suite_budget")
    accuracy = importlib.import_module("gpu_suite_accuracy")
    clock = TickClock(1.0)
    tp.use_clock(clock)
    budget = gb.Budget(budget_s, first_s=5)

    class Model:
        stop_training = False

    guard = accuracy.BudgetGuard(budget, epochs=8, reserve_s=3)
    guard.set_model(Model())
    epoch = 0
    while epoch < 8 and not guard.model.stop_training:
        guard.on_epoch_begin(epoch)
        clock.t += 4  # An epoch takes 5 s on the fake clock.
        guard.on_epoch_end(epoch)
        epoch += 1
    if budget_s == 60:  # 8 epochs of 5 s and the reserve fit.
        assert guard.stopped is None and epoch == 8
    else:  # Stopped once the epochs left no longer fit: never past it.
        assert guard.stopped.startswith(f"budget: stopped after {epoch} of 8")
        assert 2 <= epoch < 8 and budget.elapsed() <= 30
    assert guard.epoch_s == [5.0] * epoch


@pytest.mark.slow
@pytest.mark.no_tensorflow
@pytest.mark.gpu_smoke
def test_gpu_suite_smoke(tmp_path, capsys):
    """The documented plan on --smoke settings: a throughput call, then an
    accuracy call, each its own process and files."""
    env = dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT
    )
    for part in ("throughput", "accuracy"):
        result = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "benchmarks", "gpu_suite.py"),
                "--smoke",
                f"--part={part}",
                f"--output_dir={tmp_path}",
                f"--data_dir={tmp_path / 'absent'}",  # Synthetic JPEGs.
            ],
            capture_output=True,
            text=True,
            timeout=1500,
            env=env,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        times = [x for x in result.stdout.splitlines() if x.startswith("part times")]
        assert times and "preflight" in times[0] and part in times[0]
        with capsys.disabled():  # The per-part times, shown by plain pytest.
            print(f"\n--part={part} smoke call: {times[0]}")
    _check_throughput(_report(tmp_path, "throughput"))
    _check_accuracy(_report(tmp_path, "accuracy"))


def _check_throughput(report):
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
            assert "skipped" not in row and "failed" not in row, (policy, config)
            assert row["images_per_s"]["median"] > 0
            if config == "record":  # One timed recording, and its bytes.
                assert row["bytes_per_example_epoch"] > 0
            else:
                assert len(row["per_repeat_images_per_s"]) == 2
            if config not in ("record", "fused_limit"):
                assert row["overhead"]["fraction"] is not None
        if torch:
            assert "images_per_s" in rows[(policy, "torch_eager")]
    names = [t["name"] for t in report["targets"]]
    assert "kd logits KD vs fused limit (float32)" in names
    assert (
        "recorded-teacher KD vs student alone (same replayed stream) (float32)"
    ) in names
    assert report["preflight"]["one_step_s"] > 0
    assert report["budget"]["skipped"] == []


def _check_accuracy(report):
    runs = [r["run"] for r in report["accuracy"]["runs"]]
    assert runs == ["teacher", "kd_kd", "student", "keras_kd", "kd_fa"]
    for run in report["accuracy"]["runs"]:
        assert "failed" not in run and "skipped" not in run, run
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["wall_s"] > 0
    assert report["accuracy"]["jpeg_decoder"] in ("Pillow", "tf.io")
    assert "kd_kd test accuracy" in [t["name"] for t in report["targets"]]
