"""One recipe run of `benchmarks/accuracy.py`: its command and its logs.

`recipe_call` turns a (method, seed) of the suite into the recipe script,
its flags and the models of its results.json to report; `run_recipe` runs
it in its own process; `validation_accuracy` scores its student on a
validation split.

Example:

```python
script, args, phases = recipe_call("kd", 0, dataset, flags, "/tmp/kd_s0", [])
code, seconds, command = run_recipe(script, args, "/tmp/kd_s0.log")
```
"""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

from keras_kd import presets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_report import SUBSET  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_recipe(script, args, log_path):
    """Runs one recipe; returns `(returncode, seconds, command)`."""
    command = [sys.executable, os.path.join(ROOT, "recipes", script)] + args
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return code, time.perf_counter() - start, " ".join(command[1:])


def tail(path, lines=5):
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def curve(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [float(row["val_accuracy"]) for row in csv.DictReader(f)]


def normalize_like_run(images, out):
    """`images` normalised as the finished run in `out` normalised its data
    (the mean and std in its `results.json`)."""
    with open(os.path.join(out, "results.json")) as f:
        norm = json.load(f)["dataset"]["normalization"]
    mean, std = np.float32(norm["mean"]), np.float32(norm["std"])
    return ((images.astype("float32") - mean) / std).astype("float32")


def validation_accuracy(out, folder, model_file="student.keras"):
    """Accuracy of a finished run's student (`out/<model_file>`) on the
    `test.npz` of a validation folder, its images prepared as the run
    prepared its data: resized to the student's input size (a protocol's
    `image_size`, e.g. `reffakd_fashion`'s 32x32), then normalised
    (`normalize_like_run`)."""
    import keras

    from keras_kd import data

    split = np.load(os.path.join(folder, "test.npz"))
    x, y = split["x"], split["y"]
    if x.ndim == 3:  # NHW, one channel, as the recipes' npz loader reads it.
        x = x[..., None]
    model = keras.models.load_model(os.path.join(out, model_file), compile=False)
    size = model.input_shape[1:3]
    if None not in size:
        x = data.resize_images(x, size)
    x = normalize_like_run(x, out)
    logits = model.predict(x, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y.reshape(-1)))


def wait_for_teacher(work, seed, log, timeout=3600):
    """The teacher file of another process's kd run of `seed` (a suite in
    parts, --nowith_kd), once that run has finished; None if it failed."""
    out = os.path.join(work, f"kd_s{seed}")
    deadline = time.time() + timeout
    while not os.path.exists(os.path.join(out, "results.json")):
        if time.time() > deadline:
            return None
        log(f"waiting for the teacher of seed {seed} in {out}")
        time.sleep(30)
    return os.path.join(out, "teacher_0.keras")


# SKD's own protocol (docs/methods.md §2): `recipes/specialize.py` on a
# class subset, beside its three baselines, from the seed's kd teacher;
# `skd_subset` on every image of the subset's classes, `skd_subset_<n>` on
# n per class repeated to as many steps (the paper frames specialisation
# as too little data).
SKD_SUBSET = "skd_subset"
SKD_SUBSET_CLASSES = "0,1,2,3,4"
SKD_SUBSET_PHASES = [
    ("skd", "skd"),
    ("scratch", "scratch"),
    ("finetune", "finetune teacher"),
    ("subset_kd", "renormalised-logits kd"),
]


def skd_subset_images(method):
    """Images per class of an SKD class-subset method (0: all), or None
    for any other method: `skd_subset_10` → 10, `skd_subset` → 0."""
    if method == SKD_SUBSET:
        return 0
    prefix = SKD_SUBSET + "_"
    if method.startswith(prefix) and method[len(prefix) :].isdigit():
        return int(method[len(prefix) :])
    return None


def _subset_phases(images):
    """The reported names of a class-subset run's models."""
    suffix = f" ({images}/class)" if images else ""
    return [(phase, SUBSET + name + suffix) for phase, name in SKD_SUBSET_PHASES]


# Suite methods that run a preset with more recipe flags: `kd_ce1` is KD
# at the 1·CE + 0.9·KD mix the FA, AFD and RTK presets train on (the kd
# row's protocol trains on 0.1·CE + 0.9·KD): the control that isolates
# what their feature terms add. `kd_tuned` is KD from the seed's teacher at
# the (T, α) a `--tune` grid picks (`accuracy_suites.TUNE_GRIDS`; without
# one, the protocol's), so that a tuned method meets a tuned KD.
VARIANTS = {
    "kd_ce1": ("kd", ["--ce_weight=1", "--kd_weight=0.9"]),
    "kd_tuned": ("kd", []),
}


def preset_of(method):
    """The preset a suite method runs: `preset_of("kd_ce1")` → `"kd"`."""
    return VARIANTS.get(method, (method, []))[0]


def preset_parts(method):
    """The `Preset`s a suite method runs, e.g. two for `"kd+dlkd"`."""
    return presets.parse(preset_of(method))


def suite_method(method):
    """Whether the suite can run `method`: a preset or presets joined by
    '+' (`kd+dlkd`), a variant or an SKD class-subset method
    (`skd_subset_10`)."""
    if skd_subset_images(method) is not None:
        return True
    try:
        preset_parts(method)
    except ValueError:
        return False
    return True


# Flags of the suite's datasets that only recipes/distill.py knows.
_DISTILL_ONLY = ("--reffakd_",)


def teacher_seeds(method, seed, seeds):
    """The seeds whose kd teachers a method of `seed` distils from: its own
    and, for several teachers, those of the next seeds in turn."""
    parts = preset_parts(method)
    if parts[0].teacher != "model":
        return []
    count = max(max(p.min_teachers for p in parts), 1)
    rotation = seeds[seeds.index(seed) :] + seeds[: seeds.index(seed)]
    return [rotation[i % len(rotation)] for i in range(count)]


def recipe_call(method, seed, dataset, common, out, teachers):
    """`(script, args, phases)` of one run; `phases` pairs each model of its
    results.json with the method name it is reported as."""
    args = [
        f"--seed={seed}",
        f"--student={dataset['student']}",
        f"--epochs={dataset['epochs']}",
        f"--output_dir={out}",
        "--export=",
    ]
    images = skd_subset_images(method)
    if images is not None:
        common = [a for a in common if not a.startswith(_DISTILL_ONLY)]
        return (
            "specialize.py",
            common
            + args
            + [
                f"--teacher={teachers[0]}",
                f"--classes={SKD_SUBSET_CLASSES}",
                f"--images_per_class={images}",
            ]
            # Few images per class, as many steps as on all of them.
            + ["--match_full_steps"] * bool(images),
            _subset_phases(images),
        )
    preset, variant = VARIANTS.get(method, (method, []))
    args = common + [f"--method={preset}"] + variant + args
    phases = [("distilled", method)]
    if method == "kd":
        args += [
            "--baseline",
            f"--teacher={dataset['teacher']}",
            f"--teacher_epochs={dataset['teacher_epochs']}",
        ]
        phases += [("teacher_0", "teacher"), ("student_alone", "student")]
    else:
        args.append("--nobaseline")
        if teachers:
            args.append("--teacher=" + ",".join(teachers))
    if preset_parts(method)[0].teacher != "soft_labels":
        return "distill.py", args, phases
    # The (T, α) points of a seed share its autoencoder's table.
    tables = os.path.join(os.path.dirname(out), "reffakd_tables")
    return "reffakd.py", args + [f"--reffakd_soft_labels={tables}"], phases
