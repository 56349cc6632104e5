"""benchmarks/accuracy.py, the CPU accuracy suite: its table, tuning,
merging and the recipe calls it makes, on made-up runs (no timing is
asserted); one slow end-to-end run."""

import importlib
import json
import os
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runs():
    rng = np.random.default_rng(0)
    runs = []
    for method in ("student", "kd"):
        for seed in range(3):
            runs.append(
                {
                    "method": method,
                    "seed": seed,
                    "last": rng.uniform(0.5, 0.9),
                    "best": rng.uniform(0.5, 0.9),
                    "train_seconds": rng.uniform(10, 20),
                    "images_per_second": rng.uniform(100, 200),
                    "curve": list(rng.uniform(0, 1, 5)),
                }
            )
    runs.append({"method": "kd", "seed": 3, "failed": "boom", "command": ""})
    return runs


def _report(runs, summary):
    return {
        "suite": "cpu",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"host": "h", "platform": "p", "cpu_count": 2, "device": "cpu"},
        "backend": "tensorflow",
        "command": "cmd",
        "seeds": [0, 1, 2, 3],
        "wall_seconds": 60.0,
        "datasets": [
            {
                "key": "digits",
                "teacher": "t",
                "student": "s",
                "note": "n",
                "epochs": 5,
                "teacher_epochs": 5,
                "protocol_epochs": [80, 30],
                "runs": runs,
                "summary": summary,
            }
        ],
    }


@pytest.mark.slow
def test_accuracy_cpu_suite_runs_the_recipes(tmp_path):
    """One seed, one epoch, KD only: the teacher, student and KD rows."""
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "accuracy.py"),
            "--suite=cpu",
            "--datasets=digits",
            "--methods=kd",
            "--seeds=0",
            "--epochs=1",
            "--teacher_epochs=1",
            f"--output_dir={tmp_path}",
            f"--work_dir={tmp_path / 'work'}",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    stem = [f[:-5] for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(stem) == 1
    with open(tmp_path / f"{stem[0]}.json") as f:
        report = json.load(f)
    (dataset,) = report["datasets"]
    rows = {row["method"]: row for row in dataset["summary"]}
    assert set(rows) == {"teacher", "student", "kd"}
    for row in rows.values():
        assert row["seeds"] == 1 and 0.0 <= row["last"] <= 1.0
    assert all(
        len(r["curve"]) == 1 for r in dataset["runs"] if r["method"] != "teacher"
    )
    assert os.path.getsize(tmp_path / f"{stem[0]}.png") > 0
    with open(tmp_path / f"{stem[0]}.md") as f:
        assert "| kd |" in f.read()


def test_accuracy_summary_table(accuracy, accuracy_report):
    runs = _runs()
    summary = {row["method"]: row for row in accuracy.summarize(runs)}
    kd_last = [r["last"] for r in runs if r["method"] == "kd" and "last" in r]
    assert summary["kd"]["seeds"] == 3 and summary["kd"]["failed"] == 1
    assert summary["kd"]["last"] == pytest.approx(np.mean(kd_last))
    assert summary["kd"]["last_std"] == pytest.approx(np.std(kd_last, ddof=1))
    table = accuracy_report.format_markdown(_report(runs, list(summary.values())))
    kd_line = next(line for line in table.splitlines() if line.startswith("| kd |"))
    kd_std = np.std(kd_last, ddof=1)
    assert f"{100 * np.mean(kd_last):.2f} ± {100 * kd_std:.2f}" in kd_line
    assert "mean ± std (sample) over seeds" in table
    assert "3 (1 failed)" in kd_line
    # 5 epochs are fewer than the protocol's 80: flagged.
    assert "**Shortened run**: 5 student / 5 teacher epochs" in table


@pytest.mark.parametrize("matplotlib", ["installed", "absent"])
def test_accuracy_report_plots_when_matplotlib_is_installed(
    accuracy, tmp_path, monkeypatch, capsys, matplotlib
):
    if matplotlib == "installed":
        pytest.importorskip("matplotlib", reason="needs matplotlib installed")
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    runs = _runs()
    stem = str(tmp_path / "accuracy")
    accuracy.write_report(_report(runs, accuracy.summarize(runs)), stem)
    printed = capsys.readouterr().out
    with open(stem + ".md") as f:
        assert "| kd |" in f.read()
    if matplotlib == "installed":
        with open(stem + ".png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert "Wrote " + stem + ".md, .json, .png" in printed
    else:
        assert not os.path.exists(stem + ".png")
        assert "matplotlib is not installed" in printed
        assert "Wrote " + stem + ".md, .json\n" in printed


def test_fashion_subset_and_its_validation_split_are_stratified_and_disjoint(
    accuracy_data, tmp_path
):
    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    source.mkdir()
    data = {}
    for split, n in (("train", 200), ("test", 100)):
        # Distinct images, so that each subset row names one source row.
        x = rng.integers(0, 256, size=(n, 4, 4, 1)).astype("uint8")
        x[:, 0, 0, 0] = np.arange(n) % 251
        x[:, 0, 1, 0] = np.arange(n) // 251
        y = np.arange(n) % 4
        np.savez(source / f"{split}.npz", x=x, y=y)
        data[split] = (x, y)
    out, out_val = accuracy_data.fashion_subset(
        str(source), str(tmp_path / "work"), 40, 20
    )

    def rows(images, split):
        x, _ = data[split]
        return [
            int(np.flatnonzero((x == image).all(axis=(1, 2, 3)))[0]) for image in images
        ]

    train = np.load(os.path.join(out, "train.npz"))
    val = np.load(os.path.join(out_val, "test.npz"))
    test = np.load(os.path.join(out, "test.npz"))
    assert np.bincount(train["y"]).tolist() == [10] * 4
    assert np.bincount(val["y"]).tolist() == [5] * 4
    train_rows, val_rows = rows(train["x"], "train"), rows(val["x"], "train")
    # Validation: training images, none of them in the training subset.
    assert not set(train_rows) & set(val_rows)
    assert (data["train"][1][val_rows] == val["y"]).all()
    # Both folders train on the same subset; the test split is untouched.
    np.testing.assert_array_equal(
        np.load(os.path.join(out_val, "train.npz"))["x"], train["x"]
    )
    np.testing.assert_array_equal(test["x"], data["test"][0])


def test_validation_accuracy_scores_the_saved_student(accuracy_runs, tmp_path):
    """Against NumPy: the run's normalisation, then the argmax of a
    one-layer student's logits."""
    import json

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 4, 1)).astype("uint8")
    y = rng.integers(0, 3, size=50)
    folder = tmp_path / "val"
    folder.mkdir()
    np.savez(folder / "test.npz", x=x, y=y)
    out = tmp_path / "run"
    out.mkdir()
    mean, std = 70.0, 90.0
    (out / "results.json").write_text(
        json.dumps({"dataset": {"normalization": {"mean": [mean], "std": [std]}}})
    )
    student = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    student.save(out / "student.keras")
    kernel, bias = (np.asarray(w) for w in student.layers[-1].get_weights())
    logits = ((x.astype("float32") - mean) / std).reshape(50, -1) @ kernel + bias
    expected = np.mean(np.argmax(logits, -1) == y)
    assert accuracy_runs.validation_accuracy(str(out), str(folder)) == expected


def test_validation_accuracy_resizes_like_the_protocol(accuracy_runs, tmp_path):
    """A 32x32 student (reffakd_fashion's `image_size`) scored on 28x28 NHW
    images: each image one grey level, so that the resized image keeps it
    and a one-layer student's logits are the level's times the summed
    kernel (a NumPy reference)."""
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 256, size=40).astype("uint8")
    x = np.broadcast_to(levels[:, None, None], (40, 28, 28)).copy()
    y = rng.integers(0, 3, size=40)
    folder, out = tmp_path / "val", tmp_path / "run"
    folder.mkdir()
    out.mkdir()
    np.savez(folder / "test.npz", x=x, y=y)
    mean, std = 70.0, 90.0
    (out / "results.json").write_text(
        json.dumps({"dataset": {"normalization": {"mean": [mean], "std": [std]}}})
    )
    student = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    student.save(out / "student.keras")
    kernel, bias = (np.asarray(w) for w in student.layers[-1].get_weights())
    normalised = (levels.astype("float32")[:, None] - mean) / std
    logits = normalised @ kernel.sum(0, keepdims=True) + bias
    expected = np.mean(np.argmax(logits, -1) == y)
    assert accuracy_runs.validation_accuracy(str(out), str(folder)) == expected


def test_merge_replaces_a_rerun_of_the_same_method_and_seed(accuracy, tmp_path):
    runs = _runs()
    first = _report(runs, accuracy.summarize(runs))
    first["methods"] = ["kd", "fitnets"]
    again = [{"method": "kd", "seed": 0, "last": 0.5, "best": 0.5}]
    second = _report(again, accuracy.summarize(again))
    second["methods"] = ["kd"]
    # Each part's chosen weights and sweeps are kept.
    first["datasets"][0]["weights"] = {"fitnets": {"label": "x1", "flags": ["-a"]}}
    second["datasets"][0]["weights"] = {"kd+dlkd": {"label": "x0.1", "flags": ["-b"]}}
    sweep = {"validation_accuracy": {"x10": 0.9}, "chosen": "x10", "seeds": [0]}
    sweep.update(chosen_flags=["-c"], criterion="best")
    second["datasets"][0]["tuning"] = {"at": sweep}
    paths = []
    for i, part in enumerate((first, second)):
        paths.append(str(tmp_path / f"part{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(part, f)
    out = tmp_path / "merged"  # Made by merge_reports.
    accuracy.merge_reports(paths, str(out))
    (merged,) = [
        p for p in os.listdir(out) if p.startswith("accuracy_") and p.endswith(".json")
    ]
    with open(out / merged) as f:
        report = json.load(f)
    kept = [
        r
        for r in report["datasets"][0]["runs"]
        if r["method"] == "kd" and r["seed"] == 0
    ]
    assert kept == again  # The later part's run, once.
    assert set(report["datasets"][0]["weights"]) == {"fitnets", "kd+dlkd"}
    assert report["datasets"][0]["tuning"] == {"at": sweep}
    assert report["methods"] == ["kd", "fitnets"]
    others = [r for r in runs if (r["method"], r["seed"]) != ("kd", 0)]
    assert len(report["datasets"][0]["runs"]) == len(others) + 1


def test_table_says_whether_a_method_beats_kd_beyond_the_seed_spread(
    accuracy, accuracy_report
):
    runs = [
        {"method": m, "seed": s, "last": v + d, "best": v + d}
        for m, v in (
            ("kd", 0.80),
            ("fitnets", 0.85),
            ("at", 0.801),
            ("teacher", 0.95),
            ("subset: skd", 0.99),
        )
        for s, d in ((0, -0.01), (1, 0.01))
    ]
    table = accuracy_report.format_markdown(_report(runs, accuracy.summarize(runs)))
    line = {
        row.split(" | ")[0][2:]: row
        for row in table.splitlines()
        if row.startswith("| ")
    }
    assert "+5.00 (above)" in line["fitnets"]  # 5 points > 1 + 1 std.
    assert "+0.10 (within noise)" in line["at"]
    assert "| – |" in line["teacher"] and "| – |" in line["subset: skd"]


def test_skd_subset_runs_the_specialize_recipe_from_the_seeds_teacher(accuracy):
    dataset = {"student": "s", "teacher": "t", "epochs": 2, "teacher_epochs": 3}
    common = ["--dataset=npz:/d", "--reffakd_diagonal=0.008"]
    script, args, phases = accuracy.recipe_call(
        "skd_subset", 1, dataset, common, "/out", ["/t1.keras"]
    )
    assert script == "specialize.py"
    assert "--teacher=/t1.keras" in args and "--seed=1" in args
    assert not [a for a in args if a.startswith("--reffakd_")]
    assert [p for p, _ in phases] == ["skd", "scratch", "finetune", "subset_kd"]
    assert "--images_per_class=0" in args and "--match_full_steps" not in args
    assert [name for _, name in phases][0] == "subset: skd"
    # The paper's small-data regime: n images per class.
    script, args, phases = accuracy.recipe_call(
        "skd_subset_10", 2, dataset, common, "/out", ["/t2.keras"]
    )
    assert script == "specialize.py" and "--images_per_class=10" in args
    assert "--match_full_steps" in args
    assert [name for _, name in phases] == [
        "subset: skd (10/class)",
        "subset: scratch (10/class)",
        "subset: finetune teacher (10/class)",
        "subset: renormalised-logits kd (10/class)",
    ]
    assert accuracy.skd_subset_images("skd_subset_x") is None
    assert accuracy.skd_subset_images("skd") is None
    script, args, phases = accuracy.recipe_call("kd", 0, dataset, common, "/out", [])
    assert script == "distill.py" and "--teacher=t" in args
    assert "--reffakd_diagonal=0.008" in args and "--baseline" in args
    assert [name for _, name in phases] == ["kd", "teacher", "student"]


def test_kd_at_the_presets_ce_mix_is_a_kd_run_from_the_seeds_teacher(accuracy):
    dataset = {"student": "s", "teacher": "t", "epochs": 2, "teacher_epochs": 3}
    assert accuracy.teacher_seeds("kd_ce1", 1, [0, 1, 2]) == [1]
    script, args, phases = accuracy.recipe_call(
        "kd_ce1", 1, dataset, ["--dataset=npz:/d"], "/out", ["/t1.keras"]
    )
    assert script == "distill.py"
    assert "--method=kd" in args and "--method=kd_ce1" not in args
    assert {"--ce_weight=1", "--kd_weight=0.9", "--nobaseline"} <= set(args)
    assert "--teacher=/t1.keras" in args and "--baseline" not in args
    # Its own row, not a second kd row.
    assert phases == [("distilled", "kd_ce1")]
    assert accuracy.suite_method("kd_ce1") and accuracy.suite_method("skd_subset_10")
    assert not accuracy.suite_method("kd_ce2")


def test_joined_presets_are_a_suite_method(accuracy):
    """`kd+dlkd`: DLKD's terms beside KD at the join's 1·CE, from the
    seed's teacher, its DLKD weights scaled as DLKD's own are."""
    suites = importlib.import_module("accuracy_suites")
    dataset = {"student": "s", "teacher": "t", "epochs": 2, "teacher_epochs": 3}
    assert accuracy.suite_method("kd+dlkd") and not accuracy.suite_method("kd+nope")
    assert accuracy.teacher_seeds("kd+dlkd", 2, [0, 1, 2]) == [2]
    assert accuracy.teacher_seeds("kd+fa_multi", 2, [0, 1, 2]) == [2, 0]
    script, args, phases = accuracy.recipe_call(
        "kd+dlkd", 2, dataset, ["--dataset=npz:/d"], "/out", ["/t2.keras"]
    )
    assert script == "distill.py" and "--method=kd+dlkd" in args
    assert "--teacher=/t2.keras" in args and phases == [("distilled", "kd+dlkd")]
    assert suites.tune_flags("kd+dlkd", 0.1, "fashion") == suites.tune_flags(
        "dlkd", 0.1, "fashion"
    )
    weights, tags = suites.chosen_weights(["kd+dlkd=x0.1"], "fashion")
    assert tags == {"kd+dlkd": "_x0.1"}
