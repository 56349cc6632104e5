"""The recipes feed a loaded teacher what it was trained on and stop on a
teacher near chance (`--teacher_inputs`, `--allow_weak_teacher`).

In-process on digits (TensorFlow backend, as test_recipes.py) with a tiny
teacher that scales its own 0..255 inputs (`Rescaling(1/255)` first, a
softmax head), as `keras.applications` and users' models do.
"""

import os

import keras
import numpy as np
import pytest
from absl import flags as absl_flags
from test_recipe_errors import run_in_process
from test_recipes import distillation_in_process
from test_recipes import read_json
from test_recipes import recipe

import keras_kd as kd
from keras_kd.cli import distill
from keras_kd.cli import teachers as teachers_lib
from keras_kd.cli.common import RecipeError
from keras_kd.model_outputs import PROBABILITY_FLOOR as FLOOR


def pixel_teacher(size=8):
    """Rescaling(1/255) → conv → pool → softmax, on (size, size, 1)."""
    inputs = keras.Input((size, size, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inputs, outputs, name=f"pixel_teacher_{size}")


def trained_in_process(args):
    """`recipes/distill.py args...` run in this process (as
    `distillation_in_process`, then trained); returns its results."""
    defined = set(absl_flags.FLAGS)
    try:
        distill.define_flags()
        absl_flags.FLAGS(["distill.py", *args])
        run = distill._Distillation("distill")
        run.train()
        return run.report()
    finally:
        for flag in set(absl_flags.FLAGS) - defined:
            delattr(absl_flags.FLAGS, flag)
        absl_flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def trained_pixel_teacher(tmp_path_factory, digits_split):
    """A pixel teacher trained on raw digits pixels, saved; its own test
    accuracy on raw pixels."""
    x, y, x_test, y_test = digits_split
    keras.utils.set_random_seed(0)
    model = pixel_teacher()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=30, batch_size=64, verbose=0)
    path = str(tmp_path_factory.mktemp("teacher") / "pixel_teacher.keras")
    model.save(path)
    own = model.predict(x_test.astype("float32"), verbose=0).argmax(-1)
    return path, float(np.mean(own == y_test))


def test_auto_feeds_raw_pixels_to_a_teacher_that_scales_them(
    trained_pixel_teacher, digits_split, tmp_path
):
    path, own_accuracy = trained_pixel_teacher
    _, _, x_test, y_test = digits_split
    assert own_accuracy > 0.5
    out = str(tmp_path / "run")
    run = distillation_in_process(
        [f"--teacher={path}", "--export=", f"--output_dir={out}"]
    )
    reported = run.loaded_results[0]["last_epoch_test_accuracy"]
    assert abs(reported - own_accuracy) <= 1 / len(y_test)
    assert run._resolved()["teacher_inputs"] == [{"convention": "raw", "size": [8, 8]}]
    # In the step, the teacher gets the pixels back from the student's inputs.
    images = x_test[:16].astype("float32")
    fed = run.distiller(run.data.normalize(x_test[:16]), training=True)
    teacher = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fed["teachers"][0]["logits"]),
        np.log(np.maximum(teacher.predict(images, verbose=0), FLOOR)),
        atol=1e-4,
    )
    assert not os.path.exists(out)


def test_a_teacher_near_chance_stops_the_run_unless_allowed(
    trained_pixel_teacher, tmp_path, capsys
):
    path, _ = trained_pixel_teacher
    out = str(tmp_path / "run")
    args = [f"--teacher={path}", "--teacher_inputs=normalized", "--export="]
    code = run_in_process("distill", [*args, f"--output_dir={out}"])
    stderr = capsys.readouterr().err
    assert code == 2
    for words in (
        "less than 5 points above chance (10.0% for 10 classes)",
        "its input convention (it was fed the student's normalised inputs",
        "try --teacher_inputs=raw",
        "its class order",
        "its label count (10 outputs for 10 classes)",
        "--allow_weak_teacher",
    ):
        assert words in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    assert not os.path.exists(out)
    # The override distils from it anyway.
    allowed = [*args, "--allow_weak_teacher", "--epochs=1", "--nobaseline"]
    run = distillation_in_process([*allowed, f"--output_dir={out}"])
    assert isinstance(run.teacher_inputs[0], keras.layers.Identity)
    results = trained_in_process([*allowed, f"--output_dir={out}"])
    assert results["resolved"]["teacher_inputs"][0]["convention"] == "normalized"
    assert results["models"]["teacher_0"]["last_epoch_test_accuracy"] < 0.15
    assert read_json(os.path.join(out, "flags.json"))["teacher_inputs"] == "normalized"


def test_a_teacher_of_another_size_is_resized_and_zoo_teachers_are_not(tmp_path):
    path = str(tmp_path / "pixel_teacher_16.keras")
    pixel_teacher(16).save(path)
    out = f"--output_dir={tmp_path / 'run'}"
    args = [f"--teacher={path}", "--teacher_inputs=raw", "--export=", out]
    run = distillation_in_process([*args, "--allow_weak_teacher"])
    transform = run.teacher_inputs[0]
    assert [type(layer).__name__ for layer in transform.layers] == [
        "Normalization",
        "Resizing",
    ]
    assert run._resolved()["teacher_inputs"][0]["size"] == [16, 16]
    with pytest.raises(RecipeError, match="less than 5 points above chance"):
        distillation_in_process(args)  # An untrained teacher: chance.
    assert distillation_in_process(["--export=", out]).teacher_inputs == [None]
    assert teachers_lib.WEAK_TEACHER_MARGIN == 0.05


def test_the_teacher_cache_records_the_teacher_on_its_own_inputs(
    trained_pixel_teacher, digits_split, tmp_path
):
    path, _ = trained_pixel_teacher
    x, _, _, _ = digits_split
    cache = str(tmp_path / "cache")
    trained_in_process(
        [
            f"--teacher={path}",
            f"--teacher_cache={cache}",
            "--epochs=1",
            "--nobaseline",
            "--export=",
            f"--output_dir={tmp_path / 'run'}",
        ]
    )
    record = kd.offline.Record.load(cache)
    assert record.manifest["teachers"][0]["name"].endswith("teacher_0_raw_inputs")
    teacher = keras.models.load_model(path)
    probabilities = teacher.predict(x[:100].astype("float32"), verbose=0)
    np.testing.assert_allclose(
        record.arrays[0]["teacher_logits"].astype("float32"),
        np.log(np.maximum(probabilities, FLOOR)),
        rtol=2e-3,
        atol=2e-2,
    )


@pytest.mark.slow
def test_the_issue_scenario_end_to_end(trained_pixel_teacher, tmp_path):
    """`recipes/distill.py --teacher=<pixel teacher>` as a user runs it: the
    teacher's reported accuracy is its own, the KD student is not destroyed."""
    path, own_accuracy = trained_pixel_teacher
    out = str(tmp_path / "run")
    result = recipe(
        "distill",
        f"--teacher={path}",
        "--epochs=20",
        "--export=",
        f"--output_dir={out}",
    )
    assert "teacher_0 is fed raw 0..255 pixels at 8x8" in result.stdout
    models = read_json(os.path.join(out, "results.json"))["models"]
    assert abs(models["teacher_0"]["last_epoch_test_accuracy"] - own_accuracy) < 0.01
    distilled = models["distilled"]["last_epoch_test_accuracy"]
    assert distilled > 0.5
    assert distilled > models["student_alone"]["last_epoch_test_accuracy"] - 0.1
