"""Presets through `recipes/distill.py`: every registered preset on digits
(slow), and the epoch schedules the recipe scales to its `--epochs`.

One epoch on 64 student images from a teacher trained for one epoch; a
preset passes when the run ends with every term logged, finite, at a
positive weight.
"""

import os

import numpy as np
import pytest
from test_recipes import distillation_in_process
from test_recipes import read_csv
from test_recipes import read_json
from test_recipes import recipe

from keras_kd import presets

# Per-preset flags: no teacher network for reffakd; two teachers for
# fa_multi; CRD with 64 negatives (the default 16 384 on 64 images only
# costs time; num_data is set from the data).
EXTRA = {
    "reffakd": ["--reffakd_ae_epochs=1"],
    "crd": ["--hparam=num_negatives=64"],
}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher") / "run")
    recipe(
        "train_teacher",
        "--model=digits_cnn_large",
        "--epochs=1",
        "--export=",
        f"--output_dir={out}",
    )
    return os.path.join(out, "model.keras")


@pytest.mark.slow
@pytest.mark.parametrize("name", presets.names())
def test_preset_runs_through_the_recipe(name, teacher_file, tmp_path):
    preset = presets.get(name)
    if preset.teacher == "soft_labels":
        teachers = []
    else:
        teachers = [f"--teacher={','.join([teacher_file] * preset.min_teachers)}"]
    out = str(tmp_path / "run")
    recipe(
        "distill",
        f"--method={name}",
        *teachers,
        *EXTRA.get(name, []),
        "--epochs=1",
        "--train_limit=64",
        "--nobaseline",
        "--export=",
        f"--output_dir={out}",
    )
    results = read_json(os.path.join(out, "results.json"))
    weights = results["resolved"]["term_weights"]
    assert weights and all(w > 0 for w in weights.values())
    log = read_csv(os.path.join(out, "distilled", "log.csv"))
    assert len(log) == 1
    for term in weights:
        assert np.isfinite(float(log[0][term])), (term, log[0])
    assert np.isfinite(float(log[0]["total_loss"]))
    assert results["dataset"]["student_train_images"] == 64


def test_the_recipe_scales_the_schedules_to_its_epochs(tmp_path):
    out = f"--output_dir={tmp_path / 'run'}"
    args = ["--method=dkd+ctkd", "--epochs=12", "--export=", out]
    run = distillation_in_process(args)
    used = run._resolved()["method_hyperparameters"]
    assert used["dkd"]["warmup_epochs"] == 1 and used["ctkd"]["lambda_epochs"] == 1
    assert run.terms["dkd"][0].warmup_epochs == 1
    assert run.terms["ctkd"][0].lambda_epochs == 1
    run = distillation_in_process([*args, "--hparam=warmup_epochs=5"])
    assert run._resolved()["method_hyperparameters"]["dkd"]["warmup_epochs"] == 5
    assert run.terms["dkd"][0].warmup_epochs == 5
    run = distillation_in_process(["--method=dkd", "--epochs=240", "--export=", out])
    assert run._resolved()["method_hyperparameters"]["dkd"]["warmup_epochs"] == 20
    assert not os.path.exists(tmp_path / "run")
