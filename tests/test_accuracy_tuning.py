"""benchmarks/accuracy.py's `--tune`: the grids it sweeps, how it chooses
on the validation split and extends a grid past a winning edge, and the
notebooks' weighting of ReffAKD's protocol (faked runs, no training)."""

import importlib

import keras
import numpy as np
import pytest
from helpers import load_benchmark
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce


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
