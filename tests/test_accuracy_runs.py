"""benchmarks/accuracy.py's `run_dataset`: the recipe calls it makes, the
store it reads and writes (`--store_dir`, `--store_only`) and the
validation scores, with faked recipe runs (no training)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from absl import app as absl_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
