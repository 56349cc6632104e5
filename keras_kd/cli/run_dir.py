"""The run directory: `flags.json` (a run's identity) and `results.json`."""

import json
import os
import shutil

import numpy as np

from keras_kd.cli.common import ABSL_FLAGS
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError

# Flags that do not change what a run computes (not compared on resume).
_VOLATILE_FLAGS = {
    "overwrite",
    "overwrite_teacher_cache",
    "verbose",
    "export",
    "tflite_quantization",
    "output_dir",
    "data_dir",
    "input_workers",
    "allow_weak_teacher",
}


def run_flags(recipe):
    """The flags that define a run, as stored in `flags.json`."""
    values = {"recipe": recipe}
    for name, flag in sorted(FLAGS.flag_values_dict().items()):
        if name in _VOLATILE_FLAGS or name in ABSL_FLAGS:
            continue
        values[name] = flag
    return values


def prepare_output_dir(recipe):
    """Refuses a directory holding another run; writes `flags.json`."""
    out = FLAGS.output_dir
    stored = run_flags(recipe)
    path = os.path.join(out, "flags.json")
    if os.path.isdir(out) and os.listdir(out):
        if FLAGS.overwrite:
            if not os.path.exists(path):
                raise RecipeError(
                    f"--output_dir={out} holds files that are not a "
                    f"keras_kd run (no flags.json); --overwrite only "
                    f"replaces runs. Choose another --output_dir."
                )
            shutil.rmtree(out)
        elif not os.path.exists(path):
            raise RecipeError(
                f"--output_dir={out} is not empty and holds no keras_kd run "
                f"(no flags.json). Choose an empty or new directory."
            )
        else:
            with open(path) as f:
                previous = json.load(f)
            diff = _flag_differences(previous, stored)
            if diff:
                lines = "\n".join(
                    f"  --{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items()
                )
                raise RecipeError(
                    f"--output_dir={out} holds a run with different flags:\n"
                    f"{lines}\nRerun with the same flags to resume it, pass "
                    f"--overwrite to discard it, or choose another "
                    f"--output_dir."
                )
            print(f"Resuming the run in {out}.")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(stored, f, indent=2)


def _flag_differences(previous, stored, flag_values=FLAGS):
    """`{flag: (stored before, now)}` of the flags that differ. A flag that
    an earlier keras_kd version did not have counts as equal when it is at
    its default now (a new flag's default keeps the old behaviour)."""
    diff = {}
    for name in sorted(set(previous) | set(stored)):
        now = stored.get(name)
        if (
            name not in previous
            and name in flag_values
            and (now == flag_values[name].default)
        ):
            continue
        if previous.get(name) != now:
            diff[name] = (previous.get(name), now)
    return diff


def write_results(results):
    path = os.path.join(FLAGS.output_dir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=_json_default)
    os.replace(tmp, path)
    print(f"\nResults: {path}")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
