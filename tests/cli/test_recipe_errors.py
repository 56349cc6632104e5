"""Recipes refuse bad input before writing anything.

Each case runs the recipe's `main` in this process (`run_in_process`: fast,
no subprocess per case) and checks its one-line message on stderr and that
no output folder was written; one subprocess test checks the contract as a
user sees it (exit code 2, no traceback). TensorFlow backend, as
test_recipes.py.
"""

import importlib
import os
import sys
from unittest import mock

import pytest
from helpers import recipe_flag_scope
from test_recipes import recipe
from test_recipes import write_npz_folder

# Bad inputs: (recipe, flags, expected message). `{npz}` is a folder
# prepared per case, `{busy}` a non-empty folder that is not a run.
BAD_INPUTS = {
    "unknown_method": ("distill", ["--method=kd+nope"], "Unknown method 'nope'"),
    "unknown_model": (
        "distill",
        ["--student=resnet1000"],
        "Unknown model --student=resnet1000",
    ),
    "unknown_dataset": (
        "distill",
        ["--dataset=no_such_dataset_xyz"],
        "Unknown dataset",
    ),
    "bad_flag_value": ("distill", ["--mixed_precision=float8"], "--mixed_precision"),
    "unknown_flag": ("distill", ["--epoch=3"], "Unknown command line flag 'epoch'"),
    "teacher_file_missing": (
        "distill",
        ["--teacher=/nonexistent/t.keras"],
        "no such file",
    ),
    "hparam_unknown": (
        "distill",
        ["--method=dkd", "--hparam=bogus=3"],
        "--hparam=bogus=3: Unknown hyper-parameter(s) ['bogus'] for preset 'dkd'",
    ),
    "hparam_num_data": (
        "distill",
        ["--method=crd", "--hparam=num_data=50"],
        "the student trains on 100 images",
    ),
    "distribution_backend": (
        "distill",
        ["--distribution=data_parallel"],
        "needs KERAS_BACKEND=jax",
    ),
    "npz_missing_test": (
        "train_teacher",
        ["--dataset=npz:{npz}"],
        "has neither test.npz",
    ),
    "npz_float_images": (
        "train_teacher",
        ["--dataset=npz:{npz}"],
        "'x' must be uint8 images, got float32",
    ),
    "npz_shape_mismatch": (
        "train_teacher",
        ["--dataset=npz:{npz}"],
        "test images (9, 9, 1)",
    ),
    "dir_not_a_run": ("train_teacher", ["--output_dir={busy}"], "no flags.json"),
    "dir_not_a_run_overwrite": (
        "train_teacher",
        ["--output_dir={busy}", "--overwrite"],
        "no flags.json",
    ),
}


def prepare_bad_case(case, root, digits_split):
    root.mkdir()
    npz = root / "npz"
    if case == "npz_missing_test":
        write_npz_folder(str(npz), digits_split)
        os.remove(npz / "test.npz")
    elif case == "npz_float_images":
        write_npz_folder(str(npz), digits_split, x_dtype="float32")
    elif case == "npz_shape_mismatch":
        write_npz_folder(str(npz), digits_split, test_shape=(9, 9, 1))
    busy = root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    return {"npz": str(npz), "busy": str(busy)}


def run_in_process(name, args):
    """`recipes/<name>.py args...` in this process; returns its exit code.

    The flags the recipe defines are removed afterwards, so the next call
    defines them anew, as a fresh process would.
    """
    module = importlib.import_module(f"keras_kd.cli.{name}")
    with recipe_flag_scope():
        with mock.patch.object(sys, "argv", [f"{name}.py", *args]):
            with pytest.raises(SystemExit) as exit_:
                module.main()
    return exit_.value.code


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_writing(case, tmp_path, digits_split, capsys):
    name, args, message = BAD_INPUTS[case]
    paths = prepare_bad_case(case, tmp_path / case, digits_split)
    out = str(tmp_path / case / "run")
    args = [a.format(**paths) for a in args]
    if not any(a.startswith("--output_dir") for a in args):
        args.append(f"--output_dir={out}")
    code = run_in_process(name, args)
    stderr = capsys.readouterr().err
    assert code not in (0, None)
    assert message in stderr, stderr[-2000:]
    assert not os.path.exists(out)
    assert os.listdir(paths["busy"]) == ["notes.txt"]


def test_a_refused_run_exits_non_zero_without_a_traceback(tmp_path):
    """The one subprocess check of the error contract: exit code 2, one
    line on stderr, no traceback, nothing written."""
    out = str(tmp_path / "run")
    result = recipe("distill", "--method=kd+nope", f"--output_dir={out}", check=False)
    assert result.returncode == 2
    assert "Error: Unknown method 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(out)
