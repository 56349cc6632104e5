"""`recipes/distill.py --teacher_cache`, `--hparam` and CRD through the CLI.

Subprocesses on digits (TensorFlow), as tests/cli/test_recipes.py; the
recorded targets are checked against the teacher's own logits recomputed
here, and reuse against the files' modification times.
"""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from test_recipe_errors import run_in_process
from test_recipes import ROOT
from test_recipes import read_csv
from test_recipes import read_json
from test_recipes import recipe

from keras_kd import data as kd_data
from keras_kd.cli.common import RecipeError
from keras_kd.cli.methods import parse_hparams

FAST = ["--epochs=2", "--nobaseline", "--export="]


def cache_files(path):
    """`{file name: mtime_ns}` of a record's manifest and shards."""
    return {
        name: os.stat(os.path.join(path, name)).st_mtime_ns
        for name in sorted(os.listdir(path))
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A run that trains its teacher and records it, then a second run
    (another --output_dir, the first run's teacher file) on the same cache."""
    root = tmp_path_factory.mktemp("cache")
    cache = str(root / "cache")
    first = str(root / "first")
    result = recipe(
        "distill",
        *FAST,
        "--teacher_epochs=1",
        f"--teacher_cache={cache}",
        f"--output_dir={first}",
    )
    before = cache_files(cache)
    teacher = os.path.join(first, "teacher_0.keras")
    time.sleep(0.05)  # So a rewrite would change the mtimes.
    second = str(root / "second")
    again = recipe(
        "distill",
        *FAST,
        f"--teacher={teacher}",
        f"--teacher_cache={cache}",
        f"--output_dir={second}",
    )
    return {
        "cache": cache,
        "teacher": teacher,
        "first": first,
        "second": second,
        "result": result,
        "again": again,
        "before": before,
        "root": root,
    }


@pytest.mark.slow
def test_record_then_reuse(recorded):
    cache = recorded["cache"]
    assert "[teacher_cache] recording" in recorded["result"].stdout
    assert "[teacher_cache] reusing" in recorded["again"].stdout
    assert "recording" not in recorded["again"].stdout
    # Reused: the manifest and both epochs' shards are untouched.
    assert set(recorded["before"]) == {
        "manifest.json",
        "e0000_000000000.npz",
        "e0001_000000000.npz",
    }
    assert cache_files(cache) == recorded["before"]
    assert read_json(os.path.join(recorded["first"], "results.json"))[
        "teacher_cache"
    ] == {"path": cache, "reused": False}
    results = read_json(os.path.join(recorded["second"], "results.json"))
    assert results["teacher_cache"] == {"path": cache, "reused": True}
    # The student trained from the record: the KD term and the CE are logged.
    log = read_csv(os.path.join(recorded["second"], "distilled", "log.csv"))
    assert len(log) == 2
    assert all(np.isfinite(float(row["kd"])) and float(row["kd"]) > 0 for row in log)
    # The stored targets are the teacher's logits on the student's images
    # (digits: no augmentation, pixels / 255), recomputed here.
    (x, y), _, _ = kd_data.load("digits")
    teacher = keras.models.load_model(recorded["teacher"], compile=False)
    expected = teacher.predict(x[:100].astype("float32") / 255.0, verbose=0)
    for epoch in (0, 1):
        shard = np.load(os.path.join(cache, f"e000{epoch}_000000000.npz"))
        np.testing.assert_array_equal(shard["offsets"], 0)
        assert not shard["flip"].any()
        np.testing.assert_allclose(
            shard["teacher_logits"].astype("float32"), expected, atol=2e-2, rtol=2e-3
        )
    assert np.abs(expected).max() > 1.0  # Not trivially small logits.


@pytest.mark.slow
def test_mismatching_seed_is_refused_before_writing(recorded):
    out = str(recorded["root"] / "other_seed")
    refused = recipe(
        "distill",
        *FAST,
        f"--teacher={recorded['teacher']}",
        "--seed=1",
        f"--teacher_cache={recorded['cache']}",
        f"--output_dir={out}",
        check=False,
    )
    assert refused.returncode == 2
    assert "other seed" in refused.stderr
    assert "recorded 0, now 1" in refused.stderr
    assert "--overwrite_teacher_cache" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not os.path.exists(out)
    assert cache_files(recorded["cache"]) == recorded["before"]


@pytest.mark.slow
def test_other_teacher_refused_then_overwritten(recorded, tmp_path):
    """A teacher trained otherwise (2 epochs) has other weights: refused,
    then --overwrite_teacher_cache records it anew."""
    cache = str(tmp_path / "cache")
    import shutil

    shutil.copytree(recorded["cache"], cache)
    args = [*FAST, "--teacher_epochs=2", f"--teacher_cache={cache}"]
    refused = recipe("distill", *args, f"--output_dir={tmp_path / 'a'}", check=False)
    assert refused.returncode == 2
    assert "other teacher weights" in refused.stderr
    before = cache_files(cache)
    time.sleep(0.05)
    again = recipe(
        "distill",
        *args,
        "--overwrite_teacher_cache",
        f"--output_dir={tmp_path / 'a'}",
        "--overwrite",
    )
    assert "[teacher_cache] recording" in again.stdout
    after = cache_files(cache)
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in after)


def test_feature_method_is_refused_before_writing(tmp_path, capsys):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "run")
    code = run_in_process(
        "distill",
        [
            "--method=kd+fitnets",
            *FAST,
            f"--teacher_cache={cache}",
            f"--output_dir={out}",
        ],
    )
    stderr = capsys.readouterr().err
    assert code == 2
    assert "['fitnets']" in stderr
    assert "teacher features" in stderr
    assert not os.path.exists(out) and not os.path.exists(cache)


def test_parse_hparams():
    assert parse_hparams(
        [
            "beta=6",
            "alpha=0.5",
            "flag=True",
            "x=None",
            "layers=[1, 2]",
            "mode=global",
            "s='a b'",
            "on=false",
        ]
    ) == {
        "beta": 6,
        "alpha": 0.5,
        "flag": True,
        "x": None,
        "layers": [1, 2],
        "mode": "global",
        "s": "a b",
        "on": False,
    }
    for bad, message in (
        ("beta", "expected name=value"),
        ("=3", "expected name=value"),
        ("beta=[1,", "not a Python literal"),
    ):
        with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
            parse_hparams([bad])
    with pytest.raises(RecipeError, match="given twice"):
        parse_hparams(["beta=1", "beta=2"])


@pytest.mark.slow
def test_crd_with_hparams_end_to_end(tmp_path):
    """CRD reads example indices (supplied by the training pipeline) and
    its memory has one row per student training image (num_data = 100)."""
    out = str(tmp_path / "crd")
    recipe(
        "distill",
        "--method=crd",
        "--hparam=num_negatives=64",
        "--hparam=feat_dim=16",
        *FAST,
        "--teacher_epochs=1",
        f"--output_dir={out}",
    )
    results = read_json(os.path.join(out, "results.json"))
    assert results["resolved"]["hyperparameters"] == {
        "num_negatives": 64,
        "feat_dim": 16,
        "num_data": 100,
    }
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert len(log) == 2
    assert all(np.isfinite(float(r["crd"])) and float(r["crd"]) > 0 for r in log)


def kill_then_resume(args, out, phase="distilled", epoch=2):
    """Starts the recipe, SIGKILLs it after `epoch` epochs of `phase`, reruns
    it; returns the rerun's CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    process = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "distill.py"),
            *args,
            f"--output_dir={out}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    metadata = os.path.join(out, phase, "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            if read_json(metadata)["epoch"] >= epoch:
                break
        except (OSError, ValueError, KeyError):
            pass  # Not there yet, or being written.
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(out, "results.json"))
    return recipe("distill", *args, f"--output_dir={out}")


@pytest.mark.slow
def test_cache_resume_after_kill_gives_the_same_weights(recorded, tmp_path):
    args = [
        "--epochs=12",
        "--nobaseline",
        "--export=",
        f"--teacher={recorded['teacher']}",
        f"--teacher_cache={tmp_path / 'cache'}",
    ]
    full = str(tmp_path / "full")
    recipe("distill", *args, f"--output_dir={full}")
    resumed = kill_then_resume(args, str(tmp_path / "killed"), epoch=3)
    assert "[distilled] resuming at epoch" in resumed.stdout
    assert "[teacher_cache] reusing" in resumed.stdout
    a = keras.models.load_model(os.path.join(full, "student.keras"))
    b = keras.models.load_model(tmp_path / "killed" / "student.keras")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    log = read_csv(tmp_path / "killed" / "distilled" / "log.csv")
    assert [int(r["epoch"]) for r in log] == list(range(12))


@pytest.mark.slow
def test_crd_resumes_after_kill(recorded, tmp_path):
    args = [
        "--method=crd",
        "--hparam=num_negatives=64",
        "--epochs=10",
        "--nobaseline",
        "--export=",
        f"--teacher={recorded['teacher']}",
    ]
    out = str(tmp_path / "crd")
    resumed = kill_then_resume(args, out, epoch=3)
    assert "[distilled] resuming at epoch" in resumed.stdout
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert [int(r["epoch"]) for r in log] == list(range(10))
    assert all(np.isfinite(float(r["crd"])) for r in log)
