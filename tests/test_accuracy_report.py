"""benchmarks/accuracy_report.py's paired differences and the suite's
converged Fashion-MNIST entry, on hand-computed numbers (no training)."""

import glob
import importlib.util
import json
import os

import pytest
from absl import app as absl_app

from keras_kd import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_paired_differences_by_hand(accuracy_report):
    mean, std, above, below, n = accuracy_report.paired_differences(
        _runs(), "fitnets", "kd"
    )
    assert (mean, std) == pytest.approx((0.004, 0.001))
    assert (above, below, n) == (3, 0, 3)
    mean, std, above, below, n = accuracy_report.paired_differences(_runs(), "at", "kd")
    assert (mean, std) == pytest.approx((-0.004, 0.006))  # ddof=1.
    assert (above, below, n) == (1, 2, 3)
    assert accuracy_report.paired_differences(_runs(), "fitnets", "nobody") is None


def _table(runs, accuracy_report):
    dataset = {
        "key": "d",
        "teacher": "t",
        "student": "s",
        "note": "n",
        "epochs": 5,
        "teacher_epochs": 5,
        "runs": runs,
        "summary": accuracy_report.summarize(runs),
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
    table = accuracy_report.format_markdown(full)
    cells = {
        row.split(" | ")[0][2:]: row.split(" | ")
        for row in table.splitlines()
        if row.startswith("| ")
    }
    return table, cells


def test_table_has_paired_columns_vs_kd_and_the_student_alone(accuracy_report):
    table, cells = _table(_runs(), accuracy_report)
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


def test_class_subset_rows_get_their_own_plot_panel_without_the_teacher(
    accuracy_report,
):
    runs = _runs()
    dataset = {"key": "d", "teacher": "t", "student": "s", "runs": runs}
    full = {"datasets": [dict(dataset, summary=accuracy_report.summarize(runs))]}
    main, subset = accuracy_report.panels(full)
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
    full = {
        "datasets": [
            dict(dataset, runs=plain, summary=accuracy_report.summarize(plain))
        ]
    }
    assert [p["title"] for p in accuracy_report.panels(full)] == ["d: t → s"]


def test_a_kd_ce1_control_gets_its_own_paired_column(accuracy_report):
    # fitnets − kd_ce1: +0.3 − 0.2, +0.4 − 0.4, +0.5 − 0.1 points → +0.1,
    # 0.0, +0.4: mean +0.17, sample std 0.21, 2 of 3 above.
    runs = _runs() + [
        {"method": "kd_ce1", "seed": s, "last": v, "best": v}
        for s, v in enumerate((0.802, 0.814, 0.821))
    ]
    table, cells = _table(runs, accuracy_report)
    assert "vs kd_ce1, paired by seed" in table
    assert cells["fitnets"][4:7] == [
        "+0.40 ± 0.10 (3/3 above)",
        "+2.40 ± 1.05 (3/3 above)",
        "+0.17 ± 0.21 (2/3 above)",
    ]
    assert cells["kd_ce1"][6] == "–" and len(cells["kd"]) == len(cells["fitnets"])
    assert "kd_ce1" not in _table(_runs(), accuracy_report)[0]


def test_one_seed_has_no_spread(accuracy_report):
    runs = [r for r in _runs() if r["seed"] == 0]
    _, cells = _table(runs, accuracy_report)
    assert cells["fitnets"][4] == "+0.30 (1/1 above)"
    # No "± 0.00" for one seed, and no verdict against KD's noise.
    assert "±" not in cells["fitnets"][1] and cells["fitnets"][1].endswith("(one seed)")
    assert cells["fitnets"][3].endswith("(one seed)")
    assert {r["method"]: r["last_std"] for r in accuracy_report.summarize(runs)}[
        "kd"
    ] == 0


def test_summary_std_is_the_sample_std(accuracy_report):
    # kd: 0.800, 0.810, 0.820 -> sample std 0.010 (population would be 0.0082);
    # at: 0.790, 0.812, 0.816 -> mean 0.806, squares 256 + 36 + 100 (1e-6) over 2.
    rows = {r["method"]: r for r in accuracy_report.summarize(_runs())}
    assert rows["kd"]["last_std"] == pytest.approx(0.010)
    assert rows["at"]["last_std"] == pytest.approx((392e-6 / 2) ** 0.5)


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(ROOT, "benchmarks/results/accuracy_*.json")))
)
def test_earlier_reports_render_again(accuracy_report, path):
    with open(path) as f:
        earlier = json.load(f)
    table = accuracy_report.format_markdown(earlier)
    kd = next(line for line in table.splitlines() if line.startswith("| kd |"))
    assert "above)" in kd or "below)" in kd  # Paired vs the student alone.


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


def test_times_are_quoted_only_from_quiet_runs(accuracy_report):
    runs = [
        {"method": "kd", "seed": 0, "last": 0.8, "train_seconds": 10.0},
        {"method": "kd", "seed": 1, "last": 0.9, "train_seconds": 20.0},
        {"method": "kd", "seed": 2, "last": 0.7, "train_seconds": 99.0},
    ]
    runs[0]["load_average"] = [0.4, 1.5]
    runs[1]["load_average"] = [0.6, 1.6]  # Loaded at the end; run 2: unrecorded.
    (row,) = accuracy_report.summarize(runs)
    assert row["train_seconds"] == 10.0 and row["train_seconds_std"] == 0.0
    assert row["last"] == pytest.approx(0.8) and row["loaded"] == 2
    assert accuracy_report._loaded(row) == " (2 not quoted: load > 1.5 or unrecorded)"


def test_training_time_counts_phases_and_the_sweeps_other_grid_points(accuracy_report):
    dataset = {
        "runs": [
            {"method": "teacher", "train_seconds": 100.0, "load_average": [1, 1]},
            {"method": "kd", "train_seconds": 50.0},
            {"method": "fa", "train_seconds": 60.0, "load_average": [1, 1]},
            {"method": "fa", "failed": "boom"},
        ],
        "tuning": {"fa": {"chosen": "1", "train_seconds": {"1": 60.0, "10": 7.0}}},
    }
    assert accuracy_report.training_seconds(dataset) == (217.0, 3, 1)


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
