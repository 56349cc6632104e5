"""Smoke tests of benchmarks/ other than the accuracy suite: a few steps
each, well-formed outputs only (no timing is asserted)."""

import importlib
import json
import math

import keras
import numpy as np
import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("throughput")


@pytest.fixture(scope="module")
def throughput_rows(throughput):
    # The module the loaded throughput.py imports (its folder is on sys.path
    # once throughput.py is loaded): the runners run_benchmark builds.
    return importlib.import_module("throughput_rows")


@pytest.mark.slow
def test_throughput_writes_a_well_formed_table_and_json(
    throughput, throughput_rows, tmp_path
):
    configs = ["keras_logits_feature", "kd_logits_feature", "torch_kd"]
    try:
        result = throughput.run_benchmark(
            teacher="digits_cnn_large",
            student="digits_cnn_large",
            batch_size=8,
            steps=2,
            repeats=2,
            warmup_steps=1,
            input_shape=(8, 8, 1),
            num_classes=10,
            configs=configs,
            output_dir=str(tmp_path),
            command="pytest",
            clock="cpu",
            log=lambda _: None,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    json_path, md_path = result["files"]
    with open(json_path) as f:
        saved = json.load(f)
    assert saved["backend"] == keras.backend.backend()
    assert saved["settings"]["feature_layer"] == "stage2"
    assert saved["settings"]["clock"] == "cpu"
    with open(md_path) as f:
        assert "cpu clock" in f.read().splitlines()[0]
    rows = {row["config"]: row for row in saved["rows"]}
    assert list(rows)[:3] == ["student", "teacher_forward", "fused_limit"]
    assert set(rows) == {"student", "teacher_forward", "fused_limit", *configs}
    # Zoo CNNs for digits have no PyTorch twin: the row says why (see
    # test_torch_row_says_why_it_is_skipped for both cases).
    assert rows["torch_kd"]["skipped"] == (
        "PyTorch twins exist for the zoo's CIFAR ResNets only"
        if throughput_rows.torch_installed()
        else "PyTorch is not installed"
    )
    timed = [r for r in rows.values() if "skipped" not in r]
    for row in timed:
        rates = row["per_repeat_images_per_s"]
        assert len(rates) == 2 and all(r > 0 and math.isfinite(r) for r in rates)
        assert row["images_per_s"]["median"] == pytest.approx(np.median(rates))
    # The fused limit is 1 / (1/r_student + 1/r_teacher) per repeat.
    student = np.array(rows["student"]["per_repeat_images_per_s"])
    teacher = np.array(rows["teacher_forward"]["per_repeat_images_per_s"])
    np.testing.assert_allclose(
        rows["fused_limit"]["per_repeat_images_per_s"],
        1 / (1 / student + 1 / teacher),
        rtol=1e-6,
    )
    kd_row = rows["kd_logits_feature"]
    assert kd_row["keras_reference"] == "keras_logits_feature"
    kd_rates = np.array(kd_row["per_repeat_images_per_s"])
    assert kd_row["vs_fused_limit"] == pytest.approx(
        np.median(kd_rates / rows["fused_limit"]["per_repeat_images_per_s"])
    )
    assert kd_row["vs_keras"] == pytest.approx(
        np.median(kd_rates / rows["keras_logits_feature"]["per_repeat_images_per_s"])
    )
    assert kd_row["peak_rss_mb"] > 0
    names = [t["name"] for t in saved["targets"]]
    assert names == [
        "kd_logits vs keras_logits",
        "kd_logits_feature vs keras_logits_feature",
        "kd_logits_feature vs fused_limit",
    ]
    # Ratios whose rows did not run are reported as missing, not guessed.
    assert saved["targets"][0]["ratio"] is None
    assert saved["targets"][0]["met"] is None
    assert saved["targets"][1]["ratio"] == pytest.approx(kd_row["vs_keras"])
    assert saved["targets"][1]["met"] == (kd_row["vs_keras"] >= 1.25)
    with open(md_path) as f:
        table = f.read()
    assert table.count("\n| ") == len(rows) + 1 + len(names) + 1
    assert "Command: `pytest`" in table


def test_throughput_rejects_unknown_configurations(throughput):
    with pytest.raises(ValueError, match="kd_bogus"):
        throughput.run_benchmark(configs=["kd_bogus"])


@pytest.mark.parametrize("torch", ["installed", "absent"])
def test_torch_row_says_why_it_is_skipped(throughput_rows, monkeypatch, torch):
    if torch == "installed":
        pytest.importorskip("torch", reason="needs PyTorch installed")
    else:
        monkeypatch.setattr(throughput_rows, "torch_installed", lambda: False)
    import keras_kd as kd

    cnn = kd.models.get("digits_cnn_large", num_classes=10)
    reason = throughput_rows.build_torch_runner(cnn, cnn)
    assert reason == (
        "PyTorch twins exist for the zoo's CIFAR ResNets only"
        if torch == "installed"
        else "PyTorch is not installed"
    )


def test_torch_twins_match_the_keras_zoo(throughput_rows):
    """The PyTorch row trains the same networks: same trainable sizes, and
    one KD step runs."""
    torch = pytest.importorskip("torch")
    import keras_kd as kd

    for name in ("resnet8x4", "resnet20"):
        model = kd.models.get(name, num_classes=10, input_shape=(8, 8, 3))
        twin = throughput_rows.torch_twins._torch_resnet(name, 10)
        expected = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert sum(p.numel() for p in twin.parameters()) == expected
    twins = throughput_rows.torch_twins
    runner = twins.TorchRunner(
        twins._torch_resnet("resnet20", 10),
        twins._torch_resnet("resnet8x4", 10),
        mixed_precision=False,
    )
    before = [p.detach().clone() for p in runner.student.parameters()]
    rng = np.random.default_rng(0)
    seconds = runner(
        rng.normal(size=(4, 8, 8, 3)).astype("float32"), np.arange(4), batch_size=4
    )
    assert seconds > 0
    assert any(
        not torch.equal(a, b) for a, b in zip(before, runner.student.parameters())
    )


def test_throughput_rejects_an_unknown_clock(throughput):
    with pytest.raises(ValueError, match="clock must be one of"):
        throughput.run_benchmark(clock="gpu", log=lambda _: None)


def test_code_version_names_the_commit_and_the_changed_files(tmp_path):
    import subprocess

    report_files = load_benchmark("report_files")
    assert report_files.code_version(str(tmp_path)) is None  # Not a checkout.

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert report_files.code_version(str(tmp_path)) == {
        "commit": head,
        "modified": [],
    }
    (tmp_path / "a.py").write_text("x = 2\n")
    assert report_files.code_version(str(tmp_path))["modified"] == ["a.py"]


def test_loss_balance_reads_first_and_last_epoch(tmp_path):
    loss_balance = load_benchmark("loss_balance")
    log = tmp_path / "log.csv"
    log.write_text(
        "epoch,accuracy,distillation_loss,fa,kd,loss,student_loss,val_fa\n"
        "0,0.5,50.0,0.49,1.0,51.0,1.0,0.4\n"
        "1,0.7,20.0,0.19,1.0,20.5,0.5,0.2\n"
    )
    b = loss_balance.balance(str(log))
    assert b["first"]["epoch"] == 0 and b["last"]["epoch"] == 1
    assert b["first"]["ratio"] == pytest.approx(50.0)
    assert b["last"]["ratio"] == pytest.approx(40.0)
    assert b["last"]["terms"] == {"fa": pytest.approx(0.19), "kd": 1.0}
    table = loss_balance.format_markdown({"fa_s0": b})
    assert "| fa_s0 | 1.000 | 50.000 | 50.0 | 0.500 | 20.000 | 40.0 |" in table
    alone = tmp_path / "alone.csv"
    alone.write_text("epoch,accuracy,loss\n0,0.5,1.0\n")
    assert loss_balance.balance(str(alone)) is None


def test_soft_label_rows_margins_and_per_class_accuracy_by_hand(tmp_path):
    rows = load_benchmark("soft_label_rows")
    table = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.1, 0.6, 0.3]])
    # The table's log margins, through kd.reffakd.label_margins.
    margins, rivals = rows.label_margins(np.log(table))
    np.testing.assert_allclose(margins, [math.log(5 / 3), 0.0, math.log(0.5)])
    assert list(rivals) == [1, 0, 1]
    logits = np.eye(3)[[0, 0, 1, 2, 2, 1]]
    y = np.array([0, 1, 1, 2, 2, 2])
    np.testing.assert_allclose(rows.per_class_accuracy(logits, y, 3), [1, 0.5, 2 / 3])
    # The whole report: a run folder and a student that predicts the
    # largest of its 3 inputs.
    run = tmp_path / "reffakd_s0"
    run.mkdir()
    np.save(run / "soft_labels.npy", table)
    (run / "results.json").write_text(
        json.dumps({"dataset": {"normalization": {"mean": 1.0, "std": 2.0}}})
    )
    student = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
    student.save(run / "student.keras")
    np.savez(tmp_path / "test.npz", x=2 * logits + 1, y=y)
    out = rows.report(
        [str(run)],
        [("same", str(run / "student.keras"))],
        str(tmp_path / "test.npz"),
        str(run),
    )
    assert "| 1 | +0.0000 | 0 | 50.0 | 50.0 |" in out
    assert "| mean |  |  | 72.22 | 72.22 |" in out


def test_feature_floor_is_zero_for_a_linear_teacher_and_the_variance_for_noise():
    feature_floor = load_benchmark("feature_floor")
    rng = np.random.default_rng(0)
    student = rng.normal(size=(64, 4, 4, 3)).astype("float32")
    weights, bias = rng.normal(size=(3, 5)), rng.normal(size=5)
    teacher = student @ weights + bias
    variance, residual = feature_floor.linear_floor(student, teacher)
    assert variance == pytest.approx(np.var(teacher.reshape(-1, 5), axis=0).mean())
    assert residual == pytest.approx(0.0, abs=1e-8)
    noise = rng.normal(size=(64, 4, 4, 5))
    variance, residual = feature_floor.linear_floor(student, noise)
    # 4 fitted coefficients per channel over 1,024 positions: about 4/1024
    # of the variance is explained by chance.
    assert residual == pytest.approx(variance, rel=0.02) and residual < variance
    small = rng.normal(size=(64, 2, 2, 3)).astype("float32")
    variance, residual = feature_floor.linear_floor(small, noise)
    assert 0 < residual < variance
