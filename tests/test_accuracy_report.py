"""benchmarks/accuracy_report.py's paired differences and the suite's
converged Fashion-MNIST entry, on hand-computed numbers (no training)."""

import glob
import importlib.util
import json
import os
import shutil

import keras
import numpy as np
import pytest
from absl import app as absl_app
from absl import flags as absl_flags
from helpers import load_benchmark

from keras_kd import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    return load_benchmark("accuracy_report")


# Last-epoch accuracy per seed. Paired differences, by hand:
# fitnets − kd: +0.3, +0.4, +0.5 points → mean +0.40, sample std 0.10;
# fitnets − student: +2.3, +1.4, +3.5 → mean +2.40, sample std
#   sqrt((0.01 + 1 + 1.21) / 2) = 1.0536 (population std would be 0.86);
# at − kd: −1.0, +0.2, −0.4 → mean −0.40, sample std 0.60 (population
#   0.49), 2 of 3 below; kd − student: +2, +1, +3 → +2.00 ± 1.00.
LAST = {
    "kd": (0.800, 0.810, 0.820),
    "student": (0.780, 0.800, 0.790),
    "teacher": (0.900, 0.910, 0.920),
    "fitnets": (0.803, 0.814, 0.825),
    "at": (0.790, 0.812, 0.816),
    "subset: skd": (0.950, 0.960, 0.970),
    "subset: skd (10/class)": (0.600, 0.580, 0.650),
    "subset: scratch (10/class)": (0.580, 0.590, 0.600),
}


def _runs():
    runs = [
        {"method": m, "seed": s, "last": v, "best": v}
        for m, values in LAST.items()
        for s, v in enumerate(values)
    ]
    # Seed 3: kd failed, so fitnets' seed 3 has no pair and is left out.
    runs.append({"method": "kd", "seed": 3, "failed": "boom", "command": ""})
    runs.append({"method": "fitnets", "seed": 3, "last": 0.99, "best": 0.99})
    return runs


def test_paired_differences_by_hand(report):
    mean, std, above, below, n = report.paired_differences(_runs(), "fitnets", "kd")
    assert (mean, std) == pytest.approx((0.004, 0.001))
    assert (above, below, n) == (3, 0, 3)
    mean, std, above, below, n = report.paired_differences(_runs(), "at", "kd")
    assert (mean, std) == pytest.approx((-0.004, 0.006))  # ddof=1.
    assert (above, below, n) == (1, 2, 3)
    assert report.paired_differences(_runs(), "fitnets", "nobody") is None


def _table(runs, report):
    dataset = {
        "key": "d",
        "teacher": "t",
        "student": "s",
        "note": "n",
        "epochs": 5,
        "teacher_epochs": 5,
        "runs": runs,
        "summary": report.summarize(runs),
    }
    full = {
        "suite": "cpu",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"host": "h", "platform": "p", "cpu_count": 2, "device": "cpu"},
        "backend": "tensorflow",
        "command": "cmd",
        "seeds": [0, 1, 2],
        "datasets": [dataset],
    }
    table = report.format_markdown(full)
    cells = {
        row.split(" | ")[0][2:]: row.split(" | ")
        for row in table.splitlines()
        if row.startswith("| ")
    }
    return table, cells


def test_table_has_paired_columns_vs_kd_and_the_student_alone(report):
    table, cells = _table(_runs(), report)
    assert "vs kd, paired by seed (points, mean ± sample std)" in table
    # Columns: method, last, best, unpaired, paired vs kd, vs student, ...
    assert cells["fitnets"][4:6] == [
        "+0.40 ± 0.10 (3/3 above)",
        "+2.40 ± 1.05 (3/3 above)",
    ]
    assert cells["at"][4] == "-0.40 ± 0.60 (2/3 below)"
    assert cells["kd"][4:6] == ["–", "+2.00 ± 1.00 (3/3 above)"]
    assert cells["student"][4:6] == ["-2.00 ± 1.00 (3/3 below)", "–"]
    assert cells["teacher"][3:6] == ["–", "–", "–"]
    # A class-subset row is paired only with its subset's scratch row:
    # skd − scratch at 10/class: +2, −1, +5 points → +2.00 ± 3.00 (2/3).
    assert cells["subset: skd (10/class)"][3:6] == [
        "–",
        "–",
        "+2.00 ± 3.00 (2/3 above)",
    ]
    assert cells["subset: skd"][3:6] == ["–", "–", "–"]  # No scratch row.
    assert "paired by seed with its subset's scratch row" in table


def test_class_subset_rows_get_their_own_plot_panel_without_the_teacher(report):
    runs = _runs()
    dataset = {"key": "d", "teacher": "t", "student": "s", "runs": runs}
    full = {"datasets": [dict(dataset, summary=report.summarize(runs))]}
    main, subset = report.panels(full)
    assert [r["method"] for r in main["rows"]] == ["kd", "student", "fitnets", "at"]
    assert [r["method"] for r in main["teacher"]] == ["teacher"]
    assert [r["method"] for r in subset["rows"]] == [
        "subset: skd",
        "subset: skd (10/class)",
        "subset: scratch (10/class)",
    ]
    assert subset["teacher"] == [] and subset["title"] == "d: t → s, class subsets"
    # Without class-subset rows, one panel.
    plain = [r for r in runs if not r["method"].startswith("subset: ")]
    full = {"datasets": [dict(dataset, runs=plain, summary=report.summarize(plain))]}
    assert [p["title"] for p in report.panels(full)] == ["d: t → s"]


def test_a_kd_ce1_control_gets_its_own_paired_column(report):
    # fitnets − kd_ce1: +0.3 − 0.2, +0.4 − 0.4, +0.5 − 0.1 points → +0.1,
    # 0.0, +0.4: mean +0.17, sample std 0.21, 2 of 3 above.
    runs = _runs() + [
        {"method": "kd_ce1", "seed": s, "last": v, "best": v}
        for s, v in enumerate((0.802, 0.814, 0.821))
    ]
    table, cells = _table(runs, report)
    assert "vs kd_ce1, paired by seed" in table
    assert cells["fitnets"][4:7] == [
        "+0.40 ± 0.10 (3/3 above)",
        "+2.40 ± 1.05 (3/3 above)",
        "+0.17 ± 0.21 (2/3 above)",
    ]
    assert cells["kd_ce1"][6] == "–" and len(cells["kd"]) == len(cells["fitnets"])
    assert "kd_ce1" not in _table(_runs(), report)[0]


def test_one_seed_has_no_spread(report):
    runs = [r for r in _runs() if r["seed"] == 0]
    _, cells = _table(runs, report)
    assert cells["fitnets"][4] == "+0.30 (1/1 above)"
    # No "± 0.00" for one seed, and no verdict against KD's noise.
    assert "±" not in cells["fitnets"][1] and cells["fitnets"][1].endswith("(one seed)")
    assert cells["fitnets"][3].endswith("(one seed)")
    assert {r["method"]: r["last_std"] for r in report.summarize(runs)}["kd"] == 0


def test_summary_std_is_the_sample_std(report):
    # kd: 0.800, 0.810, 0.820 -> sample std 0.010 (population would be 0.0082);
    # at: 0.790, 0.812, 0.816 -> mean 0.806, squares 256 + 36 + 100 (1e-6) over 2.
    rows = {r["method"]: r for r in report.summarize(_runs())}
    assert rows["kd"]["last_std"] == pytest.approx(0.010)
    assert rows["at"]["last_std"] == pytest.approx((392e-6 / 2) ** 0.5)


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(ROOT, "benchmarks/results/accuracy_*.json")))
)
def test_earlier_reports_render_again(report, path):
    with open(path) as f:
        earlier = json.load(f)
    table = report.format_markdown(earlier)
    kd = next(line for line in table.splitlines() if line.startswith("| kd |"))
    assert "above)" in kd or "below)" in kd  # Paired vs the student alone.


@pytest.fixture
def suites(tmp_path):
    """accuracy.py's flags, defined and parsed for `args`, and its suites
    module; removed afterwards."""
    defined = set(absl_flags.FLAGS)
    accuracy = load_benchmark("accuracy")
    accuracy.define_flags()

    def parse(*args):
        absl_flags.FLAGS.unparse_flags()
        absl_flags.FLAGS(["accuracy.py", f"--work_dir={tmp_path}", *args])
        return accuracy

    yield parse
    for flag in set(absl_flags.FLAGS) - defined:
        delattr(absl_flags.FLAGS, flag)
    absl_flags.FLAGS.unparse_flags()


def test_fashion_protocol_entry_of_the_cpu_suite(suites, monkeypatch):
    args = ["--datasets=fashion_mnist", "--fashion_mnist=/src", "--fashion_val=5000"]
    suites(*args)
    suites_module = importlib.import_module("accuracy_suites")
    monkeypatch.setattr(suites_module, "fashion_subset", lambda *a: ("/train", "/val"))
    (digits,) = suites_module.suite_datasets("cpu")
    assert digits["key"] == "fashion_mnist_20000"
    assert "--protocol=digits" in digits["flags"]
    assert "--batch_size=128" in digits["flags"]
    assert (digits["epochs"], digits["teacher_epochs"]) == (2, 3)
    suites(*args, "--fashion_protocol=fashion", "--fashion_train=60000")
    (fashion,) = suites_module.suite_datasets("cpu")
    assert fashion["key"] == "fashion_mnist_converged_60000"
    assert fashion["flags"][:3] == [
        "--dataset=npz:/train",
        "--protocol=fashion",
        "--batch_size=128",
    ]
    assert fashion["validation"]["path"] == "/val"
    assert (fashion["epochs"], fashion["teacher_epochs"]) == (30, 30)
    assert "all 60,000 training images less the 5000" in fashion["note"]
    assert "(55,000)" in fashion["note"]
    assert fashion["validation"]["from"].startswith("the 60,000 Fashion-MNIST")
    suites(*args, "--fashion_protocol=fashion", "--fashion_epochs=7")
    (fashion,) = suites_module.suite_datasets("cpu")
    assert (fashion["epochs"], fashion["teacher_epochs"]) == (7, 30)
    assert fashion["method_flags"] == {
        "reffakd": ["--reffakd_ae_epochs=7"],
        "crd": ["--hparam=num_negatives=1024"],
    }
    # --tune sweeps the presets' weights (no protocol term_weights).
    fitnets = presets.get("fitnets").defaults["fitnets_weight"]
    assert [
        suites_module.tune_flags("fitnets", f, "fashion")
        for f in suites_module.TUNE_FACTORS
    ] == [
        [f"--hparam=fitnets_weight={w:g}"]
        for w in (fitnets, fitnets / 10, fitnets * 10)
    ]
    # ReffAKD's own protocol at a budget: teachers, students and the
    # autoencoder all take --fashion_epochs.
    suites(
        *args,
        "--fashion_protocol=reffakd_fashion",
        "--fashion_train=60000",
        "--fashion_epochs=20",
    )
    (reffakd,) = suites_module.suite_datasets("cpu")
    assert reffakd["key"] == "fashion_mnist_reffakd_60000_e20"
    assert (reffakd["epochs"], reffakd["teacher_epochs"]) == (20, 20)
    assert reffakd["student"] == "lenet5_bn"
    assert reffakd["teacher"] == "fashion_cnn_large"
    assert reffakd["protocol_epochs"] == [200, 200]
    assert "--protocol=reffakd_fashion" in reffakd["flags"]
    assert "--reffakd_ae_epochs=20" in reffakd["flags"]
    assert "--reffakd_diagonal=0.008" in reffakd["flags"]


def test_times_are_quoted_only_from_quiet_runs(report):
    runs = [
        {"method": "kd", "seed": 0, "last": 0.8, "train_seconds": 10.0},
        {"method": "kd", "seed": 1, "last": 0.9, "train_seconds": 20.0},
        {"method": "kd", "seed": 2, "last": 0.7, "train_seconds": 99.0},
    ]
    runs[0]["load_average"] = [0.4, 1.5]
    runs[1]["load_average"] = [0.6, 1.6]  # Loaded at the end; run 2: unrecorded.
    (row,) = report.summarize(runs)
    assert row["train_seconds"] == 10.0 and row["train_seconds_std"] == 0.0
    assert row["last"] == pytest.approx(0.8) and row["loaded"] == 2
    assert report._loaded(row) == " (2 not quoted: load > 1.5 or unrecorded)"


def test_training_time_counts_phases_and_the_sweeps_other_grid_points(report):
    dataset = {
        "runs": [
            {"method": "teacher", "train_seconds": 100.0, "load_average": [1, 1]},
            {"method": "kd", "train_seconds": 50.0},
            {"method": "fa", "train_seconds": 60.0, "load_average": [1, 1]},
            {"method": "fa", "failed": "boom"},
        ],
        "tuning": {"fa": {"chosen": "1", "train_seconds": {"1": 60.0, "10": 7.0}}},
    }
    assert report.training_seconds(dataset) == (217.0, 3, 1)


def _dataset(**more):
    """A suite dataset entry for run_dataset with a faked recipe."""
    return {
        "key": "d",
        "flags": ["--dataset=npz:/d"],
        "student": "s",
        "teacher": "t",
        "epochs": 2,
        "teacher_epochs": 3,
        "validation": {"path": "/val"},
        **more,
    }


def test_run_dataset_adds_method_flags_weights_and_validation(
    suites, monkeypatch, tmp_path
):
    accuracy = suites()
    calls = []

    def fake_run(script, args, log_path):
        out = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir="))
        os.makedirs(out, exist_ok=True)
        result = {"last_epoch_test_accuracy": 0.5, "best_epoch_test_accuracy": 0.6}
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"models": {"distilled": result}}, f)
        calls.append((script, args))
        return 0, 1.0, "command"

    monkeypatch.setattr(accuracy, "run_recipe", fake_run)
    monkeypatch.setattr(accuracy, "wait_for_teacher", lambda w, s, log: f"/t{s}.keras")
    monkeypatch.setattr(
        accuracy, "validation_accuracy", lambda out, folder: {"/val": 0.7}[folder]
    )
    dataset = _dataset(method_flags={"reffakd": ["--reffakd_ae_epochs=2"]})
    runs = accuracy.run_dataset(
        dataset,
        ["reffakd", "fa"],
        [0],
        lambda _: None,
        weights={"fa": ["--hparam=fa_weight=10"]},
        tags={"fa": "_x0.1"},
        validate=True,
    )
    (reffakd_script, reffakd_args), (_, fa_args) = calls
    assert reffakd_script == "reffakd.py"
    assert "--reffakd_ae_epochs=2" in reffakd_args
    assert "--reffakd_ae_epochs=2" not in fa_args
    assert "--hparam=fa_weight=10" in fa_args and "--teacher=/t0.keras" in fa_args
    assert f"--output_dir={tmp_path}/d/fa_x0.1_s0" in fa_args
    assert [r["validation_last"] for r in runs] == [0.7, 0.7]


def _fake_recipe(calls):
    """A recipe run that writes every phase's results and a teacher file."""

    def run(script, args, log_path):
        out = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir="))
        os.makedirs(out, exist_ok=True)
        result = {"last_epoch_test_accuracy": 0.5, "best_epoch_test_accuracy": 0.6}
        models = dict.fromkeys(["distilled", "teacher_0", "student_alone"], result)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"models": models}, f)
        with open(os.path.join(out, "teacher_0.keras"), "w") as f:
            f.write(f"{out} run {len(calls) + 1}")  # The run that trained it.
        calls.append(args)
        return 0, 1.0, "command " + out

    return run


def test_stored_runs_are_reused_and_their_teacher_serves_the_seed(
    suites, monkeypatch, tmp_path
):
    store = tmp_path / "store"
    accuracy = suites(f"--store_dir={store}")
    calls = []
    monkeypatch.setattr(accuracy, "run_recipe", _fake_recipe(calls))
    monkeypatch.setattr(accuracy, "validation_accuracy", lambda out, folder: 0.7)
    dataset = _dataset()
    first = accuracy.run_dataset(dataset, ["kd", "fa"], [0], lambda _: None)
    assert len(calls) == 2
    assert [r["method"] for r in first] == ["kd", "teacher", "student", "fa"]
    assert (store / "d" / "kd_s0.json").exists()
    assert (store / "d" / "fa_s0.json").exists()
    kd_out = tmp_path / "d" / "kd_s0"
    assert (store / "d" / "teacher_s0.keras").read_text() == f"{kd_out} run 1"
    # Already in the first process, fa reads the stored copy: a resumed
    # run of fa then has the same --teacher flag.
    assert f"--teacher={store}/d/teacher_s0.keras" in calls[1]
    # The work folder is lost: nothing runs again, the rows are the same,
    # and a new method of seed 0 distils from the stored teacher.
    shutil.rmtree(tmp_path / "d")
    again = accuracy.run_dataset(dataset, ["kd", "fa", "at"], [0], lambda _: None)
    assert len(calls) == 3 and again[:4] == first
    assert f"--teacher={store}/d/teacher_s0.keras" in calls[-1]
    # A stored run without the validation score a sweep needs runs again;
    # with the same numbers, it keeps the commit that trained it, and a kd
    # run its stored teacher file.
    for name in ("fa_s0", "kd_s0"):
        with open(store / "d" / f"{name}.json") as f:
            record = json.load(f)
        for row in record["runs"]:
            row["code"] = {"commit": "the training commit", "modified": []}
        with open(store / "d" / f"{name}.json", "w") as f:
            json.dump(record, f)
    accuracy.run_dataset(dataset, ["kd", "fa"], [0], lambda _: None, validate=True)
    assert len(calls) == 5
    for name in ("fa_s0", "kd_s0"):
        with open(store / "d" / f"{name}.json") as f:
            row = json.load(f)["runs"][0]
        assert row["validation_last"] == 0.7
        assert row["code"]["commit"] == "the training commit"
    assert (store / "d" / "teacher_s0.keras").read_text() == f"{kd_out} run 1"
    # Without the teacher file, the kd record is not enough.
    (store / "d" / "teacher_s0.keras").unlink()
    accuracy.run_dataset(dataset, ["kd"], [0], lambda _: None)
    assert len(calls) == 6 and (store / "d" / "teacher_s0.keras").exists()


def test_weights_chosen_earlier_name_points_of_the_grid(suites):
    accuracy = suites("--weights=fa=x0.01,dlkd=x0.1")
    suites_module = importlib.import_module("accuracy_suites")
    weights, tags = suites_module.chosen_weights(["fa=x0.01", "dlkd=x0.1"], "fashion")
    assert weights == {
        "fa": suites_module.tune_flags("fa", 0.01, "fashion"),
        "dlkd": suites_module.tune_flags("dlkd", 0.1, "fashion"),
    }
    fa = presets.get("fa").defaults["fa_weight"]
    assert weights["fa"] == [f"--hparam=fa_weight={fa * 0.01:g}"]
    assert tags == {"fa": "_x0.01", "dlkd": "_x0.1"}
    weights, _ = suites_module.chosen_weights(["reffakd=T20_a0.5"], "reffakd_fashion")
    assert weights["reffakd"] == [
        "--reffakd_temperature=20",
        "--reffakd_alpha=0.05",
        "--ce_weight=0.5",
    ]
    weights, _ = suites_module.chosen_weights(["reffakd=T5_a0.9_mean"], "fashion")
    assert weights["reffakd"][1:] == ["--reffakd_alpha=0.09", "--ce_weight=0.1"]
    for bad in ("fa=x.01", "fa=0.01", "kd=x1", "reffakd=x1", "fa"):
        with pytest.raises(ValueError, match="has no grid point"):
            suites_module.chosen_weights([bad], "fashion")
    # Recorded in the dataset's entry; checked against --methods first.
    dataset = {"protocol": "fashion"}
    weights, tags = accuracy._chosen_weights(dataset, ["kd", "fa", "dlkd"])
    assert dataset["weights"]["fa"] == {"label": "x0.01", "flags": weights["fa"]}
    with pytest.raises(absl_app.UsageError, match="not in --methods"):
        accuracy._chosen_weights({"protocol": "fashion"}, ["kd", "fa"])
    with pytest.raises(absl_app.UsageError, match="has no grid point"):
        suites("--weights=fa=bogus")._chosen_weights(dataset, ["fa"])
    with pytest.raises(absl_app.UsageError, match="--tune would choose"):
        suites("--weights=fa=x0.01", "--tune")._chosen_weights(dataset, ["fa"])


def test_class_subset_runs_are_not_scored_on_the_validation_split(
    suites, tmp_path, monkeypatch
):
    """The converged suite scores each student on its validation split, but
    an SKD class-subset run is another task (specialize.py's results have
    no normalisation to score with): it is run, stored and read back from
    the store unscored, while a 10-class run is scored (a kd run's student
    alone too)."""
    accuracy = suites(f"--store_dir={tmp_path / 'store'}")
    val = tmp_path / "val"
    val.mkdir()
    np.savez(val / "test.npz", x=np.eye(4, dtype="float32"), y=[0, 1, 1, 3])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Identity()])
    # The student alone: every image's argmax moved to the class before.
    alone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False)])
    alone.set_weights([np.roll(np.eye(4, dtype="float32"), -1, axis=1)])
    calls = []

    def fake_recipe(script, args, log_path):
        out = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir"))
        calls.append(script)
        os.makedirs(out, exist_ok=True)
        result = {"last_epoch_test_accuracy": 0.5, "best_epoch_test_accuracy": 0.5}
        if script == "specialize.py":
            phases = ["skd", "scratch", "finetune", "subset_kd"]
            results = {"models": {p: result for p in phases}}
        else:
            norm = {"mean": 0.0, "std": 1.0}
            phases = ["distilled", "teacher_0", "student_alone"]
            results = {
                "dataset": {"normalization": norm},
                "models": {p: result for p in phases},
            }
            model.save(os.path.join(out, "student.keras"))
            model.save(os.path.join(out, "teacher_0.keras"))
            alone.save(os.path.join(out, "student_alone.keras"))
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f)
        return 0, 1.0, f"python {script}"

    monkeypatch.setattr(accuracy, "run_recipe", fake_recipe)
    dataset = {
        "key": "d",
        "flags": [],
        "student": "s",
        "teacher": "t",
        "epochs": 1,
        "teacher_epochs": 1,
        "validation": {"path": str(val)},
    }

    def run():
        runs = accuracy.run_dataset(
            dataset, ["kd", "skd_subset_10"], [0], lambda _: None, validate=True
        )
        return {r["method"]: r for r in runs}

    rows = run()
    assert calls == ["distill.py", "specialize.py"]
    assert rows["kd"]["validation_last"] == 0.75  # Argmax 0, 1, 2, 3.
    assert rows["student"]["validation_last"] == 0.25  # Argmax 3, 0, 1, 2.
    assert "validation_last" not in rows["subset: skd (10/class)"]
    # Each run records the checkout it ran on.
    assert rows["kd"]["code"] == accuracy.code_version(ROOT)
    assert run().keys() == rows.keys() and len(calls) == 2  # From the store.
    # --store_only: what the store lacks (fitnets, seed 1) is left out, and
    # nothing trains.
    accuracy = suites(f"--store_dir={tmp_path / 'store'}", "--store_only")
    runs = accuracy.run_dataset(
        dataset, ["kd", "fitnets", "skd_subset_10"], [0, 1], lambda _: None
    )
    assert len(calls) == 2
    assert {(r["method"], r["seed"]) for r in runs} == {
        ("kd", 0),
        ("teacher", 0),
        ("student", 0),
        ("subset: skd (10/class)", 0),
        ("subset: scratch (10/class)", 0),
        ("subset: finetune teacher (10/class)", 0),
        ("subset: renormalised-logits kd (10/class)", 0),
    }


def test_store_only_without_a_store_is_refused_before_anything_runs(suites):
    accuracy = suites("--store_only", "--datasets=digits")
    with pytest.raises(absl_app.UsageError, match="reads runs from --store_dir"):
        accuracy.main([])
