"""The recipes run as a user runs them: subprocesses on real data.

TensorFlow backend (the recipes' subprocesses inherit the environment, and
tests/run.sh runs this module on TensorFlow only). Digits runs use a couple
of epochs; the figures asserted are recomputed here independently (test
accuracy from the saved student and NumPy, class counts from the data).
Bad input and its refusal: test_recipe_errors.py.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from helpers import recipe_flag_scope

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def recipe(name, *args, check=True, timeout=400):
    """Runs `python recipes/<name>.py args...`; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_accuracy(model_path, x, y, mean=0.0, std=255.0):
    """Test accuracy of a saved model, recomputed with NumPy."""
    model = keras.models.load_model(model_path, compile=False)
    logits = model.predict((x.astype("float32") - mean) / std, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


test_accuracy.__test__ = False


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill") / "run")
    args = ["--epochs=2", "--teacher_epochs=2", f"--output_dir={out}"]
    result = recipe("distill", *args)
    return out, args, result


@pytest.mark.slow
def test_distill_defaults_end_to_end(distill_run, digits_split):
    out, _, result = distill_run
    _, _, x_test, y_test = digits_split
    results = read_json(os.path.join(out, "results.json"))
    models = results["models"]
    assert set(models) == {"teacher_0", "student_alone", "distilled"}
    assert results["resolved"]["kd_temperature"] == 4.0
    assert results["dataset"]["student_train_images"] == 100
    # The table names each model with its accuracy and size.
    for row in ("teacher_0", "student alone", "student + kd"):
        assert row in result.stdout
    assert f"{models['distilled']['params']:,}" in result.stdout
    assert models["teacher_0"]["params"] > 10 * models["distilled"]["params"]
    # The reported accuracy is the saved student's, recomputed here.
    recomputed = test_accuracy(os.path.join(out, "student.keras"), x_test, y_test)
    assert abs(recomputed - models["distilled"]["last_epoch_test_accuracy"]) < 1e-6
    for name in ("teacher_0", "student_alone"):
        acc = test_accuracy(os.path.join(out, f"{name}.keras"), x_test, y_test)
        assert abs(acc - models[name]["last_epoch_test_accuracy"]) < 1e-6
    for name in models:
        assert models[name]["images_per_second"] > 0
        assert (
            models[name]["best_epoch_test_accuracy"]
            >= (models[name]["last_epoch_test_accuracy"])
        )
    # Logs: every loss term per epoch in CSV and TensorBoard.
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert len(log) == 2
    assert {"kd", "student_loss", "total_loss", "val_accuracy"} <= set(log[0])
    total = float(log[-1]["total_loss"])
    assert total > 0 and np.isfinite(total)
    events = os.listdir(os.path.join(out, "distilled", "tensorboard", "train"))
    assert any(e.startswith("events.out.tfevents") for e in events)
    # The TFLite student (the default export), parity-checked and printed.
    tflite = results["export"]["tflite"]
    assert os.path.exists(tflite["path"]) and tflite["path"] in result.stdout
    assert tflite["max_abs_diff"] < 1e-3
    assert read_json(os.path.join(out, "flags.json"))["epochs"] == 2


@pytest.mark.slow
def test_rerun_resumes_and_other_flags_are_refused(distill_run):
    out, args, _ = distill_run
    results_path = os.path.join(out, "results.json")
    before = read_json(results_path)
    refused = recipe(
        "distill", *args[:-1], "--epochs=3", f"--output_dir={out}", check=False
    )
    assert refused.returncode != 0
    assert "different flags" in refused.stderr and "--epochs" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert read_json(results_path) == before
    assert read_json(os.path.join(out, "flags.json"))["epochs"] == 2
    # The same command finds every phase finished and trains nothing.
    again = recipe("distill", *args, "--export=")
    assert again.stdout.count("already trained") == 3
    models = read_json(results_path)["models"]
    for name in models:
        assert (
            models[name]["last_epoch_test_accuracy"]
            == (before["models"][name]["last_epoch_test_accuracy"])
        )


@pytest.mark.slow
def test_train_teacher_on_npz_then_distill_from_its_file(tmp_path, digits_split):
    """An npz folder (digits written out) for the teacher, its file reused."""
    x, _, x_test, y_test = digits_split
    folder = str(tmp_path / "npz")
    write_npz_folder(folder, digits_split)
    teacher_dir = str(tmp_path / "teacher")
    recipe(
        "train_teacher",
        f"--dataset=npz:{folder}",
        "--protocol=digits",
        "--epochs=2",
        f"--output_dir={teacher_dir}",
    )
    teacher_path = os.path.join(teacher_dir, "model.keras")
    teacher_results = read_json(os.path.join(teacher_dir, "results.json"))
    assert teacher_results["dataset"]["num_classes"] == 10
    trained = teacher_results["models"]["model"]
    assert trained["train_images"] == len(x)
    out = str(tmp_path / "fa")
    # Two teachers (the same file twice) for fa_multi, one aligner each.
    recipe(
        "distill",
        f"--teacher={teacher_path},{teacher_path}",
        "--method=fa_multi",
        "--nobaseline",
        "--epochs=1",
        "--export=",
        f"--output_dir={out}",
    )
    results = read_json(os.path.join(out, "results.json"))
    assert set(results["models"]) == {"teacher_0", "teacher_1", "distilled"}
    loaded = results["models"]["teacher_0"]
    assert loaded["loaded_from"] == teacher_path
    expected = test_accuracy(teacher_path, x_test, y_test)
    assert abs(loaded["last_epoch_test_accuracy"] - expected) < 1e-6
    assert abs(trained["last_epoch_test_accuracy"] - expected) < 1e-6
    # fa_multi: CE + 0.5·KD + 10·FA (the digits protocol's KD and FA weights).
    assert results["resolved"]["term_weights"] == {"kd": 0.5, "fa": 10.0}
    assert results["resolved"]["ce_weight"] == 1.0
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert {"kd", "fa"} <= set(log[0])


@pytest.mark.slow
def test_every_method_in_one_run(tmp_path):
    """Each method's terms in one run, with the digits protocol's weights
    (FitNets, AT, FA, SKD at methods.md's / 10) unless a flag sets one."""
    out = str(tmp_path / "all")
    recipe(
        "distill",
        "--method=fitnets+at+fa+afd+rtk+dlkd+skd",
        "--fitnets_weight=100",
        "--epochs=1",
        "--teacher_epochs=1",
        "--nobaseline",
        "--export=",
        f"--output_dir={out}",
    )
    results = read_json(os.path.join(out, "results.json"))
    assert results["resolved"]["term_weights"] == {
        "fitnets": 100.0,
        "at": 100.0,
        "kd": 0.5,
        "fa": 10.0,
        "afd": 200.0,
        "rtk": 200.0,
        "dlkd": 1.0,
        "skd_stage1": 10.0,
        "skd_stage2": 10.0,
    }
    assert set(results["models"]) == {"teacher_0", "distilled"}
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    terms = set(results["resolved"]["term_weights"])
    parts = {"dlkd_correlation", "dlkd_contrastive", "dlkd_alignment"}
    assert terms | parts <= set(log[0])
    assert all(np.isfinite(float(log[0][name])) for name in terms | parts)


@pytest.mark.slow
def test_reffakd_recipe(tmp_path, digits_split):
    out = str(tmp_path / "reffakd")
    recipe(
        "reffakd",
        "--epochs=2",
        "--reffakd_ae_epochs=2",
        "--export=",
        f"--output_dir={out}",
    )
    table = np.load(os.path.join(out, "soft_labels.npy"))
    assert table.shape == (10, 10)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-5)
    # A diagonal boost and positive cosine similarities: each class's own
    # entry is its row's largest.
    np.testing.assert_array_equal(np.argmax(table, axis=1), np.arange(10))
    results = read_json(os.path.join(out, "results.json"))
    assert results["resolved"]["ce_weight"] == pytest.approx(0.1)
    # 40 images per class, or the smallest class of the 100 training images.
    smallest = np.bincount(digits_split[1][:100]).min()
    assert results["reffakd_autoencoder"]["per_class"] == min(40, smallest)
    # 8x8 digits need no resize, so they keep the CIFAR notebook's crop;
    # the digits protocol encodes un-augmented images.
    assert results["reffakd_autoencoder"]["crop_padding"] == 4
    assert not results["reffakd_autoencoder"]["similarity_of_augmented_images"]
    assert "teacher_0" not in results["models"]
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert "reffakd" in log[0]


@pytest.mark.slow
def test_reffakd_sweep_trains_the_autoencoder_once(tmp_path):
    """T = 20 trains and keeps the table, T = 5 reads it back and trains
    the student exactly as a run that trains its own table."""
    tables = f"--reffakd_soft_labels={tmp_path / 'tables'}"
    runs = {"T20": [tables], "T5": [tables], "T5_alone": []}
    for name, extra in runs.items():
        result = recipe(
            "reffakd",
            "--epochs=1",
            "--reffakd_ae_epochs=2",
            f"--reffakd_temperature={name.split('_')[0][1:]}",
            *extra,
            "--export=",
            f"--output_dir={tmp_path / name}",
        )
        runs[name] = read_json(tmp_path / name / "results.json")
        if name == "T5":
            assert "read from" in result.stdout
    assert "reused_from" not in runs["T20"]["reffakd_autoencoder"]
    assert "reused_from" not in runs["T5_alone"]["reffakd_autoencoder"]
    reused = runs["T5"]["reffakd_autoencoder"]["reused_from"]
    assert reused.startswith(str(tmp_path / "tables"))
    tables, logs = (
        [load(tmp_path / name / file) for name in ("T20", "T5", "T5_alone")]
        for load, file in (
            (np.load, "soft_labels.npy"),
            (read_csv, "distilled/log.csv"),
        )
    )
    np.testing.assert_array_equal(tables[0], tables[1])
    np.testing.assert_array_equal(tables[1], tables[2])
    assert logs[1] == logs[2]


@pytest.mark.slow
def test_specialize_recipe(tmp_path, digits_split):
    _, _, x_test, y_test = digits_split
    out = str(tmp_path / "skd")
    recipe(
        "specialize",
        "--epochs=2",
        "--teacher_epochs=1",
        "--classes=3,5,8",
        "--baselines=scratch,subset_kd",
        "--export=",
        f"--output_dir={out}",
    )
    results = read_json(os.path.join(out, "results.json"))
    assert results["task"]["classes"] == [3, 5, 8]
    assert results["task"]["train_images"] == 30
    assert results["task"]["test_images"] == int(np.isin(y_test, [3, 5, 8]).sum())
    assert results["task"]["images_per_class"] == 10
    assert set(results["models"]) == {"teacher", "scratch", "subset_kd", "skd"}
    student = keras.models.load_model(os.path.join(out, "student.keras"))
    assert student.outputs[0].shape[-1] == 3
    log = read_csv(os.path.join(out, "skd", "log.csv"))
    assert {"skd_stage1", "skd_stage2"} <= set(log[0])
    assert "kd" not in log[0]  # SKD has no logit term.


def test_repeat_to_repeats_in_order_and_cuts():
    from keras_kd.cli.specialize import repeat_to

    x = np.arange(10)[:, None] * np.ones((1, 3))
    rx, ry = repeat_to(x, np.arange(10), 25)
    assert rx.shape == (25, 3) and ry.tolist() == list(range(10)) * 2 + [0, 1, 2, 3, 4]
    assert np.bincount(ry).tolist() == [3] * 5 + [2] * 5
    np.testing.assert_array_equal(rx[:, 0], ry)


@pytest.mark.slow
def test_specialize_matches_the_full_steps_on_few_images(tmp_path, digits_split):
    x, y, _, _ = digits_split
    out = str(tmp_path / "skd_few")
    recipe(
        "specialize",
        "--epochs=1",
        "--teacher_epochs=1",
        "--classes=3,5,8",
        "--images_per_class=4",
        "--match_full_steps",
        "--baselines=scratch",
        "--export=",
        f"--output_dir={out}",
    )
    task = read_json(os.path.join(out, "results.json"))["task"]
    # 12 distinct images repeated to as many as the three classes have.
    assert task["train_images"] == int(np.isin(y, [3, 5, 8]).sum())
    assert task["images_per_class"] == 4 and task["match_full_steps"]


def write_npz_folder(path, digits_split, x_dtype="uint8", test_shape=None):
    x, y, x_test, y_test = digits_split
    os.makedirs(path)
    np.savez(os.path.join(path, "train.npz"), x=x.astype(x_dtype), y=y)
    if test_shape is not None:
        x_test = np.zeros((len(x_test),) + test_shape, "uint8")
    np.savez(os.path.join(path, "test.npz"), x=x_test, y=y_test)


TFDS_SCRIPT = """
import runpy, sys
import tensorflow_datasets as tfds
sys.argv = ["train_teacher.py"] + sys.argv[1:]
with tfds.testing.mock_data(num_examples=96):
    runpy.run_path("recipes/train_teacher.py", run_name="__main__")
"""


@pytest.mark.slow
def test_tfds_dataset_with_mock_data(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TFDS_SCRIPT,
            "--dataset=mnist",
            "--model=digits_cnn_small",
            "--epochs=1",
            f"--output_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_json(os.path.join(out, "results.json"))
    # CIFAR protocol for a tfds dataset; mnist's shape and classes.
    assert results["resolved"]["protocol"] == "cifar"
    assert results["resolved"]["optimizer"] == "sgd"
    assert results["dataset"]["input_shape"] == [28, 28, 1]
    assert results["dataset"]["num_classes"] == 10
    assert results["models"]["model"]["train_images"] == 96


def distillation_in_process(args):
    """`recipes/distill.py args...` built in this process without training
    (flags resolved; teachers, students, terms and Distiller built)."""
    from keras_kd.cli import distill

    with recipe_flag_scope() as flags:
        distill.define_flags()
        flags(["distill.py", *args])
        return distill._Distillation("distill")


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(tmp_path):
    args = ["--nobaseline", "--teacher_epochs=2", "--epochs=12", "--export="]
    full = str(tmp_path / "full")
    recipe("distill", *args, f"--output_dir={full}")

    out = str(tmp_path / "killed")
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
    metadata = os.path.join(out, "distilled", "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metadata):
            try:
                if read_json(metadata)["epoch"] >= 4:
                    break
            except (ValueError, KeyError):
                pass  # Being written.
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(out, "results.json"))

    resumed = recipe("distill", *args, f"--output_dir={out}")
    assert "[distilled] resuming at epoch" in resumed.stdout
    assert "[teacher_0] already trained" in resumed.stdout
    a = keras.models.load_model(os.path.join(full, "student.keras"))
    b = keras.models.load_model(os.path.join(out, "student.keras"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert [int(r["epoch"]) for r in log] == list(range(12))


@pytest.mark.slow
def test_data_parallel_on_two_jax_devices(tmp_path):
    """`--distribution=data_parallel` on 2 XLA host devices: the global batch
    and scaled learning rate are printed, and epochs with a partial last
    batch (100 and 1347 images) train, each batch split evenly."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "recipes", "distill.py"),
            "--distribution=data_parallel",
            "--epochs=1",
            "--teacher_epochs=1",
            f"--output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Global batch 64 = 32 per replica × 2 replica(s)" in result.stdout
    assert read_json(tmp_path / "results.json")


def test_a_run_resumes_when_a_newer_version_added_a_flag_at_its_default():
    from absl import flags as absl_flags

    from keras_kd.cli import run_dir

    values = absl_flags.FlagValues()
    absl_flags.DEFINE_string("added_flag", "auto", "A new flag.", flag_values=values)
    values.mark_as_parsed()
    stored = {"epochs": 2, "added_flag": "auto"}
    assert run_dir._flag_differences({"epochs": 2}, stored, values) == {}
    changed = dict(stored, added_flag="numpy")
    assert run_dir._flag_differences({"epochs": 2}, changed, values) == {
        "added_flag": (None, "numpy")
    }
    assert run_dir._flag_differences({"epochs": 3}, stored, values) == {
        "epochs": (3, 2)
    }
