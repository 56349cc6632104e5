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
from helpers import load_benchmark
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def accuracy():
    return load_benchmark("accuracy")


@pytest.fixture(scope="module")
def accuracy_report():
    return load_benchmark("accuracy_report")


@pytest.fixture(scope="module")
def accuracy_runs():
    return load_benchmark("accuracy_runs")


@pytest.fixture(scope="module")
def accuracy_data():
    return load_benchmark("accuracy_data")


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


def test_tune_chooses_by_validation_accuracy(accuracy, accuracy_report, monkeypatch):
    calls = []
    scores = {"x1": 0.70, "x0.1": 0.80}
    nan = "Traceback\nFloatingPointError: Non-finite loss at epoch 1, batch 40\n"

    def fake_run(dataset, methods, seeds, log, weights=None, tags=None, **kw):
        calls.append((methods, weights, tags, kw.get("validate", False)))
        assert kw.get("teacher_pool", seeds) == [0, 1, 2]
        if methods == ["kd"]:
            return []
        label = tags[methods[0]][1:]
        if label == "x10":  # Diverged: the run's log tail.
            return [{"method": methods[0], "seed": s, "failed": nan} for s in seeds]
        if label not in scores:  # Not in the store (--store_only).
            return []
        runs = [{"method": methods[0], "seed": s, "last": 0.5} for s in seeds]
        for run in runs:
            run["validation_last"] = scores[label]
        return runs

    monkeypatch.setattr(accuracy, "run_dataset", fake_run)
    dataset = {"key": "d", "flags": [], "validation": {"path": "/v"}}
    weights, tags, record = accuracy.tune_dataset(
        dataset, ["kd", "fitnets", "skd_subset"], [0], lambda _: None, [0, 1, 2]
    )
    # The digits protocol's FitNets weight is 10.
    assert weights == {"fitnets": ["--hparam=fitnets_weight=1"]}
    assert tags == {"fitnets": "_x0.1"}
    assert record["fitnets"]["validation_accuracy"] == scores
    assert record["fitnets"]["chosen"] == "x0.1"
    # A point that failed is scored nowhere, but the record says why.
    why = "FloatingPointError: Non-finite loss at epoch 1, batch 40"
    assert record["fitnets"]["failed"] == {"x10": why}
    line = accuracy_report._tuning_line("fitnets", record["fitnets"])
    assert "x1: 70.00%, x0.1: 80.00%, x10: failed (FloatingPointError" in line
    # The centre of the grid first; every sweep run is scored on validation
    # and has its own folder tag.
    sweep = [c for c in calls if c[0] != ["kd"]]
    assert [c[2]["fitnets"] for c in sweep] == ["_x1", "_x0.1", "_x10"]
    assert all(c[3] for c in sweep)
    # A sweep in progress (--store_only): a point with no runs yet is
    # listed, not scored.
    del scores["x1"]
    calls.clear()
    _, tags, record = accuracy.tune_dataset(
        dataset, ["fitnets"], [0], lambda _: None, [0, 1, 2]
    )
    assert tags == {"fitnets": "_x0.1"} and record["fitnets"]["not_run"] == ["x1"]
    line = accuracy_report._tuning_line("fitnets", record["fitnets"])
    assert line.endswith("x10: failed (" + why + "), x1: not run yet")


def test_tune_flags_scale_every_term_weight_of_a_method(accuracy):
    suites = importlib.import_module("accuracy_suites")
    assert suites.tune_flags("dkd", 10.0, "fashion") == [
        "--hparam=alpha=10",
        "--hparam=beta=80",
    ]
    assert suites.tune_flags("fa_multi", 0.1, "digits") == ["--hparam=fa_weight=1"]
    assert suites.tune_flags("fa", 1.0, "fashion") == ["--hparam=fa_weight=100"]
    assert suites.tune_flags("dlkd", 0.1, "fashion") == [
        "--hparam=dlkd_correlation_weight=5",
        "--hparam=dlkd_contrastive_weight=0.1",
        "--hparam=dlkd_alignment_weight=2",
    ]
    for method in suites.TUNE_WEIGHTS:  # Every name is a hyper-parameter.
        assert suites.tune_flags(method, 1.0, "fashion")
    assert [label for label, _ in suites.tune_points("fa", "fashion")] == [
        "x1",
        "x0.1",
        "x10",
    ]
    assert suites.tune_points("kd", "fashion") == []
    # ReffAKD's and KD's (T, α) on ReffAKD's protocol, in the notebooks'
    # weighting (`test_notebook_grid_gives_the_notebooks_loss`), the
    # protocol's T = 5, α = 0.9 first.
    for method, flag in (("reffakd", "--reffakd_alpha"), ("kd_tuned", "--kd_weight")):
        grid = suites.tune_points(method, "reffakd_fashion")
        assert len(grid) == 6 and grid[0][0] == "T5_a0.9"
        assert f"{flag}=0.09" in grid[0][1] and "--ce_weight=0.1" in grid[0][1]
    # On the converged protocol: the defaults, the notebooks' KLDivLoss()
    # mean (the KL's weight / 10 classes, CE at 1 - α), smaller α.
    grid = dict(suites.tune_points("reffakd", "fashion"))
    assert list(grid) == [
        "T5_a0.9",
        "T5_a0.9_mean",
        "T5_a0.5",
        "T5_a0.1",
        "T5_a0.9_d0.0225",
        "T20_a0.9",
        "T20_a0.5",
    ]
    assert "--reffakd_alpha=0.09" in grid["T5_a0.9_mean"]
    assert "--ce_weight=0.1" in grid["T5_a0.9_mean"]
    # The diagonal point's flag comes after the dataset's 0.008, so it wins
    # (absl keeps a repeated flag's last value).
    dataset = {"student": "s", "teacher": "t", "epochs": 2, "teacher_epochs": 3}
    common = ["--reffakd_diagonal=0.008"] + grid["T5_a0.9_d0.0225"]
    _, args, _ = accuracy.recipe_call("reffakd", 0, dataset, common, "/w/o", [])
    diagonals = [a for a in args if a.startswith("--reffakd_diagonal=")]
    assert diagonals[-1] == "--reffakd_diagonal=0.0225"
    # Every point reads its seed's table from one folder of the suite's.
    assert "--reffakd_soft_labels=/w/reffakd_tables" in args
    assert suites.tune_points("reffakd", "digits") == []


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


def test_plot_colours_are_distinct_and_refuse_more_methods_than_colours():
    plt = pytest.importorskip("matplotlib.pyplot")
    accuracy_plot = load_benchmark("accuracy_plot")
    names = [f"m{i}" for i in range(60)]
    colours = accuracy_plot._colours(names, plt)
    assert len(set(colours.values())) == 60
    with pytest.raises(ValueError, match="61 methods, 60 colours"):
        accuracy_plot._colours(names + ["one more"], plt)


def test_tune_extends_a_weight_grid_past_a_winning_edge(accuracy, monkeypatch):
    scores = {"x1": 0.70, "x0.1": 0.80, "x10": 0.75, "x0.01": 0.85}
    swept = []

    def fake_run(dataset, methods, seeds, log, weights=None, tags=None, **kw):
        if methods == ["kd"]:
            return []
        label = tags[methods[0]][1:]
        swept.append((label, weights[methods[0]]))
        if label == "x0.001":  # A point that fails (e.g. diverges).
            return [{"method": methods[0], "seed": 0, "failed": "NaN"}]
        return [{"method": methods[0], "seed": 0, "validation_last": scores[label]}]

    monkeypatch.setattr(accuracy, "run_dataset", fake_run)
    dataset = {"key": "d", "flags": [], "validation": {"path": "/v"}}
    weights, tags, record = accuracy.tune_dataset(
        dataset, ["fitnets"], [0], lambda _: None, [0], extend=3
    )
    # x0.1 wins the grid, then x0.01 wins, then x0.001 fails: the sweep
    # stops there, with x0.01 chosen (the digits FitNets weight is 10).
    assert [label for label, _ in swept] == ["x1", "x0.1", "x10", "x0.01", "x0.001"]
    assert swept[3][1] == ["--hparam=fitnets_weight=0.1"]
    assert tags == {"fitnets": "_x0.01"} and record["fitnets"]["chosen"] == "x0.01"
    assert record["fitnets"]["validation_accuracy"] == scores
    suites = importlib.import_module("accuracy_suites")
    # A winner inside the grid, an explicit grid or no score: no extension.
    assert (
        suites.edge_point("fa", "fashion", {"x1": 0.9, "x0.1": 0.8, "x10": 0.7}) is None
    )
    assert suites.edge_point("fa", "fashion", {}) is None
    assert suites.edge_point("reffakd", "reffakd_fashion", {"T5_a0.9": 0.9}) is None
    assert suites.edge_point("fa", "fashion", {"x1": 0.8, "x10": 0.9}) == (
        "x100",
        ["--hparam=fa_weight=10000"],
    )


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


def _notebook_loss(student_logits, labels, targets, temperature, alpha):
    """ReffAKD's notebooks' `(1 − α)·CE + α·T²·KLDivLoss()(log_softmax(z/T),
    targets)`, `KLDivLoss()` averaging over batch × classes (NumPy)."""
    ce = -numpy_log_softmax(student_logits)[np.arange(len(labels)), labels].mean()
    log_q = numpy_log_softmax(student_logits / temperature)
    kl = np.mean(targets * (np.log(targets) - log_q))
    return (1 - alpha) * ce + alpha * temperature**2 * kl


@pytest.mark.parametrize("method", ["kd_tuned", "reffakd"])
def test_notebook_grid_gives_the_notebooks_loss(method):
    """Every point of the reffakd_fashion grid, built as the recipe builds
    its flags (`--ce_weight` the CE's weight, the term's weight and T),
    gives the notebooks' loss at the point's (T, α)."""
    import keras_kd as kd

    suites = load_benchmark("accuracy_suites")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 10, size=16)
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(10)])
    teacher = keras.Sequential([keras.Input((5,)), keras.layers.Dense(10)])
    table = numpy_softmax(rng.normal(size=(10, 10)))
    for label, flags in suites.tune_points(method, "reffakd_fashion"):
        t, a = (float(v) for v in label[1:].split("_a"))
        values = dict(f[2:].split("=") for f in flags)
        hp = {k: float(v) for k, v in values.items() if k != "ce_weight"}
        hp["student_loss_weight"] = float(values["ce_weight"])
        if method == "reffakd":
            source = kd.SoftLabelTeacher(table)
            built = kd.presets.build("reffakd", source, student, **hp)
        else:
            source = teacher
            built = kd.presets.build("kd", teacher, student, **hp)
        distiller = kd.Distiller(source, student, **built)
        distiller.compile("sgd", sparse_ce())
        # Training mode returns the teachers' outputs too (Dense layers: the
        # same logits as inference).
        y_pred = distiller(x, training=True)
        total = float(distiller.compute_loss(x, y, y_pred))
        z = keras.ops.convert_to_numpy(student(x))
        if method == "reffakd":
            targets = table[y]
        else:
            targets = numpy_softmax(keras.ops.convert_to_numpy(teacher(x)) / t)
        expected = _notebook_loss(z, y, targets, t, a)
        np.testing.assert_allclose(total, expected, rtol=1e-4, err_msg=label)


def test_plot_orders_bars_best_first_within_tight_limits_and_zooms_the_curves():
    plt = pytest.importorskip("matplotlib.pyplot")
    accuracy_plot = load_benchmark("accuracy_plot")
    rows = [
        {"method": m, "last": v, "last_std": 0.002}
        for m, v in (("kd", 0.886), ("student", 0.883), ("afd", 0.891))
    ]
    runs = [
        {"method": r["method"], "seed": 0, "curve": [0.5, 0.8, 0.85, r["last"]]}
        for r in rows
    ]
    panel = {"title": "t", "rows": rows, "teacher": [], "runs": runs}
    figure, (bars, whole, late) = plt.subplots(1, 3)
    colours = accuracy_plot._colours([r["method"] for r in rows], plt)
    accuracy_plot._draw_bars(bars, panel, colours)
    accuracy_plot._draw_curves(whole, late, panel, colours)
    labels = [t.get_text() for t in bars.get_xticklabels()]
    assert labels == ["afd", "kd", "student"]
    low, high = bars.get_ylim()
    assert 87.5 <= low < 88.1 and 89.3 < high <= 90.0  # Tenths stay visible.
    # The legend follows the last epoch; the zoom keeps the second half.
    legend = [t.get_text() for t in late.get_legend().get_texts()]
    assert legend == ["afd", "kd", "student"]
    assert list(late.get_lines()[0].get_xdata()) == [3, 4]
    assert len(whole.get_lines()[0].get_xdata()) == 4
    plt.close(figure)
