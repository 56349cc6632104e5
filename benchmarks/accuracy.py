"""Accuracy of every distillation method, over seeds, through the recipes.

Runs `recipes/distill.py` (`recipes/reffakd.py` for ReffAKD) for each
method and seed, each in its own process and `--work_dir` folder
(rerunning resumes finished and interrupted runs), and writes to
`--output_dir`:

- `accuracy_<suite>_<backend>_<date>.md`: per dataset, the test accuracy
  (mean ± std over seeds) at the last and the best epoch, wall time per
  run and training images/s;
- `.json`: every run's numbers, the settings and the commands;
- `.png`: accuracy per method and the mean learning curves.

With `--store_dir` (a folder in the repository; `accuracy_store.py`),
every finished run's rows and each seed's teacher file are kept there and
not run again, so a suite in parts resumes from what was committed even
when `--work_dir` is lost. `--weights=fa=x0.01,...` runs the points of
the `--tune` grid chosen in an earlier sweep.

For each seed, the KD run trains the teacher (zoo model, seeded by the
recipe) and the student alone (`--baseline`, same protocol and seed); the
other methods of that seed distil from that teacher's file (`fa_multi`
takes the teachers of this and the next seed).

Suites (defined in `accuracy_suites.py`):

- `cpu`: scikit-learn's digits (the recipes' `digits` protocol: Adam,
  student on 100 images; its epochs and batch size are read from
  `keras_kd.cli.protocols.PROTOCOLS` and the batch size is pinned for the whole suite)
  and, with `--fashion_mnist=PATH`, Fashion-MNIST: a class-stratified
  subset of the training images (20,000 by default), the whole test split
  and a stratified validation split carved from the other training images,
  written to `--work_dir` (never into the repository), with the digits
  or (`--fashion_protocol=fashion`) the converged protocol. `--tune` picks
  term weights on the validation split (digits: held-out training images).
- `cifar`: docs/methods.md §6 (SGD 0.05, ×0.1 at 62.5/75/87.5% of the epochs,
  batch 64, coupled L2 5e-4, crop+flip) for resnet32x4 → resnet8x4 and
  wrn_40_2 → wrn_16_2 on `--cifar_dataset` (e.g. `cifar100` with
  `--data_dir`, or `npz:/path/cifar10_jpeg`); `--epochs` scales the
  schedule (240 is the published protocol).

Usage:

```
python benchmarks/accuracy.py --suite=cpu --datasets=fashion_mnist \
    --fashion_mnist=../shared/data/fashion_mnist --seeds=0,1,2 \
    --fashion_protocol=fashion --fashion_train=60000
python benchmarks/accuracy.py --suite=cpu --datasets=digits --tune \
    --methods=kd,fitnets,at --seeds=0,1,2
python benchmarks/accuracy.py --suite=cifar --cifar_dataset=cifar100 \
    --data_dir=/data/tfds --epochs=240 --seeds=0,1,2
```
"""

import datetime
import json
import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_flags import define_flags  # noqa: E402
from accuracy_report import merge_reports  # noqa: E402
from accuracy_report import summarize  # noqa: E402
from accuracy_report import write_report  # noqa: E402
from accuracy_runs import curve  # noqa: E402
from accuracy_runs import recipe_call  # noqa: E402
from accuracy_runs import run_recipe  # noqa: E402
from accuracy_runs import skd_subset_images  # noqa: E402
from accuracy_runs import suite_method  # noqa: E402
from accuracy_runs import tail  # noqa: E402
from accuracy_runs import teacher_seeds  # noqa: E402
from accuracy_runs import validation_accuracy  # noqa: E402
from accuracy_runs import wait_for_teacher  # noqa: E402
from accuracy_store import load_runs  # noqa: E402
from accuracy_store import save_runs  # noqa: E402
from accuracy_store import stored_teacher  # noqa: E402
from accuracy_suites import chosen_weights  # noqa: E402
from accuracy_suites import default_methods  # noqa: E402
from accuracy_suites import edge_point  # noqa: E402
from accuracy_suites import suite_datasets  # noqa: E402
from accuracy_suites import tune_points  # noqa: E402
from report_files import code_version  # noqa: E402

from keras_kd import machine  # noqa: E402

FLAGS = flags.FLAGS


def run_dataset(
    dataset,
    methods,
    seeds,
    log,
    on_update=lambda runs: None,
    weights=None,
    tags=None,
    validate=False,
    teacher_pool=None,
):
    """Trains the teachers and every (method, seed); returns the runs.

    The dataset's `method_flags` add recipe flags to one method's runs
    (e.g. ReffAKD's autoencoder epochs); `weights` maps a method to more
    recipe flags (its term weights) and
    `tags` to a suffix of its runs' folder names (`fa_x10_s0`), so that
    runs with other weights never share a folder; with `validate`, each
    run's student (but a class-subset run's, another task) is also scored
    on the dataset's validation split (`validation_last`). A method with
    several teachers takes them from the seeds of `teacher_pool` (default
    `seeds`; see `teacher_seeds`).
    Runs found in `--store_dir` are taken from there, and finished runs
    are stored there, each with the commit it ran on (`code`)."""
    work = os.path.join(FLAGS.work_dir, dataset["key"])
    os.makedirs(work, exist_ok=True)
    common = dataset["flags"] + FLAGS.extra_flags
    weights, tags = weights or {}, tags or {}
    runs, teachers = [], {}
    # The kd runs come first: for seed s, the kd run trains the teacher
    # (seeded by the recipe) and the student alone; every other method of
    # seed s distils from that teacher file. Then seed by seed, so that an
    # interrupted suite has complete seeds.
    order = [("kd", seed) for seed in seeds if "kd" in methods] + [
        (method, seed) for seed in seeds for method in methods if method != "kd"
    ]
    store = FLAGS.store_dir
    for method, seed in order:
        name = method + tags.get(method, "")
        out = os.path.join(work, f"{name}_s{seed}")
        stored = load_runs(store, dataset["key"], name, seed)
        # A class-subset run is another task (its classes only): nothing is
        # chosen on it, and the validation split's classes do not apply.
        scored = validate and skd_subset_images(method) is None
        if method == "kd":
            teacher = stored_teacher(store, dataset["key"], seed)
            stored = stored if teacher else None  # Its teacher is needed too.
        if stored and (not scored or "validation_last" in stored[0]):
            runs += stored
            if method == "kd":
                teachers[seed] = teacher
            log(f"[{dataset['key']}] {name} seed {seed}: stored in {store}")
            on_update(runs)
            continue
        if FLAGS.store_only:
            log(f"[{dataset['key']}] {name} seed {seed}: not in {store}; left out")
            continue
        needed = (
            [seed]
            if skd_subset_images(method) is not None
            else []
            if method == "kd"
            else (teacher_seeds(method, seed, teacher_pool or seeds))
        )
        for s in needed:
            if s not in teachers:
                teachers[s] = stored_teacher(
                    store, dataset["key"], s
                ) or wait_for_teacher(work, s, log)
        picked = [teachers[s] for s in needed]
        if None in picked:
            runs.append(_failed(method, seed, "its kd run (teacher) failed", ""))
            continue
        extra = dataset.get("method_flags", {}).get(method, [])
        script, args, phases = recipe_call(
            method, seed, dataset, common + extra + weights.get(method, []), out, picked
        )
        log_path = os.path.join(work, f"{name}_s{seed}.log")
        version = code_version(ROOT)  # The code the recipe process imports.
        code, seconds, command = run_recipe(script, args, log_path)
        if code != 0:
            runs.append(_failed(method, seed, tail(log_path), command))
            if method == "kd":
                teachers[seed] = None
            log(f"[{dataset['key']}] {method} seed {seed}: FAILED (see {log_path})")
            on_update(runs)
            continue
        rows = _phase_rows(out, phases, seed, command)
        done = [dict(row, code=version) for row in rows]
        # A stored run made again only for its validation score (a finished
        # run resumed, or the same numbers trained anew) keeps the commit
        # that trained it and its teacher file byte for byte.
        kept = bool(stored) and [r["last"] for r in stored] == [r["last"] for r in done]
        if kept:
            done = [dict(r, code=old.get("code")) for r, old in zip(done, stored)]
        if scored:
            folder = dataset["validation"]["path"]
            done[0]["validation_last"] = validation_accuracy(out, folder)
            alone = "student_alone.keras"  # A kd run's, with --baseline.
            if os.path.exists(os.path.join(out, alone)):
                row = next(r for r in done if r["method"] == "student")
                row["validation_last"] = validation_accuracy(out, folder, alone)
        trained = method == "kd" and not kept
        teacher = os.path.join(out, "teacher_0.keras") if trained else None
        if store:
            save_runs(store, dataset["key"], name, seed, done, teacher)
        if method == "kd":
            # The stored copy, so that every run of this seed, in this process
            # or a resumed one, names the same teacher file (and flags).
            teachers[seed] = stored_teacher(store, dataset["key"], seed) or teacher
        runs += done
        log(
            f"[{dataset['key']}] {method} seed {seed}: "
            f"{done[0]['last']:.4f} ({seconds:.0f} s)"
        )
        on_update(runs)
    return runs


def _failed(method, seed, reason, command):
    return {"method": method, "seed": seed, "failed": reason, "command": command}


def _phase_rows(out, phases, seed, command):
    """One row per phase (`[(results key, method name), ...]`) of the
    finished recipe run in `out`."""
    with open(os.path.join(out, "results.json")) as f:
        models = json.load(f)["models"]
    rows = []
    for phase, name in phases:
        result = models[phase]
        rows.append(
            {
                "method": name,
                "seed": seed,
                "last": result["last_epoch_test_accuracy"],
                "best": result["best_epoch_test_accuracy"],
                "best_epoch": result.get("best_epoch"),
                "epochs": result.get("epochs"),
                "train_seconds": result.get("train_seconds"),
                "images_per_second": result.get("images_per_second"),
                "load_average": result.get("load_average"),
                "curve": curve(os.path.join(out, phase, "log.csv")),
                "command": command,
            }
        )
    return rows


def tune_dataset(dataset, methods, seeds, log, teacher_pool, extend=0):
    """For every method with a grid (`tune_points`), the grid point with
    the best mean last-epoch validation accuracy over `seeds`.

    The sweep's runs are the suite's own (folders tagged `_<label>`, e.g.
    `fa_x10_s0`): they train on the training split, and their students are
    scored on the validation split after training; the chosen point's runs
    are then the suite's runs of those seeds (`teacher_pool`: the suite's
    seeds, whose teachers a method with several teachers takes, as in the
    suite). Returns `(weights, tags, record)`: the chosen recipe flags and
    folder tags per method, and the sweep. While a weight grid's best
    point is its edge, up to `extend` points past it are added
    (`edge_point`)."""
    protocol = dataset.get("protocol", "digits")
    grids = {m: dict(tune_points(m, protocol)) for m in methods}
    grids = {m: grid for m, grid in grids.items() if grid}
    scores, seconds, failed = ({m: {} for m in grids} for _ in range(3))
    run_dataset(dataset, ["kd"], teacher_pool, log)  # The teachers.

    def sweep(method, label):
        runs = run_dataset(
            dataset,
            [method],
            seeds,
            log,
            weights={method: grids[method][label]},
            tags={method: f"_{label}"},
            validate=True,
            teacher_pool=teacher_pool,
        )
        done = [r["validation_last"] for r in runs if "validation_last" in r]
        errors = [r["failed"].strip().splitlines() for r in runs if "failed" in r]
        if errors:  # The error's last line, e.g. a non-finite loss.
            failed[method][label] = (errors[0] or ["no output"])[-1][:160]
        if len(done) == len(seeds):
            scores[method][label] = float(np.mean(done))
            seconds[method][label] = sum(r.get("train_seconds") or 0.0 for r in runs)

    # Point by point across methods: an interrupted sweep has every
    # method's centre first.
    for i in range(max(map(len, grids.values()), default=0)):
        for method, grid in grids.items():
            if i < len(grid):
                sweep(method, list(grid)[i])
    # Past an edge that wins, up to `extend` points per method.
    for method, grid in grids.items():
        for _ in range(extend):
            point = edge_point(method, protocol, scores[method])
            if point is None or point[0] in grid:
                break
            grid[point[0]] = point[1]
            sweep(method, point[0])
    weights, tags, record = {}, {}, {}
    for method, grid in grids.items():
        if not scores[method]:
            continue
        best = max(scores[method], key=scores[method].get)
        weights[method], tags[method] = grid[best], f"_{best}"
        record[method] = {
            "validation_accuracy": scores[method],
            "chosen": best,
            "chosen_flags": grid[best],
            "seeds": seeds,
            "criterion": "mean last-epoch validation accuracy",
            "train_seconds": seconds[method],
            "failed": failed[method],
        }
        not_run = [p for p in grid if p not in scores[method] | failed[method]]
        if not_run:  # --store_only, on a sweep in progress.
            record[method]["not_run"] = not_run
        log(f"[{dataset['key']}] {method}: {best} (validation {scores[method]})")
    return weights, tags, record


def _chosen_weights(dataset, methods):
    """`--weights` for `dataset`: `(weights, tags)`, recorded in the
    dataset's entry (`weights`); checked before any training."""
    if FLAGS.tune and FLAGS.weights:
        raise app.UsageError("--weights gives the weights --tune would choose.")
    try:
        weights, tags = chosen_weights(FLAGS.weights, dataset.get("protocol", "digits"))
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    unused = sorted(set(weights) - set(methods))
    if unused:
        raise app.UsageError(f"--weights names {unused}, not in --methods.")
    if weights:
        dataset["weights"] = {
            m: {"label": tags[m][1:], "flags": weights[m]} for m in weights
        }
    return weights, tags


def main(argv):
    del argv
    import keras

    if FLAGS.report_from:
        with open(FLAGS.report_from) as f:
            report = json.load(f)
        if FLAGS.note:
            report.setdefault("notes", []).append(FLAGS.note)
            with open(FLAGS.report_from, "w") as f:
                json.dump(report, f, indent=1)
        write_report(report, FLAGS.report_from[: -len(".json")])
        return

    methods = FLAGS.methods or default_methods()
    unknown = [m for m in methods if not suite_method(m)]
    if unknown:
        raise app.UsageError(
            f"Unknown methods {unknown}; the recipes know {default_methods()}."
        )
    if FLAGS.merge:
        merge_reports(FLAGS.merge, FLAGS.output_dir)
        return
    if FLAGS.store_only and not FLAGS.store_dir:
        raise app.UsageError("--store_only reads runs from --store_dir: give it.")
    if "kd" not in methods and FLAGS.with_kd:
        # Its runs train the teachers and the student alone.
        methods = ["kd"] + methods
    if not FLAGS.with_kd:
        methods = [m for m in methods if m != "kd"]
    seeds = [int(s) for s in FLAGS.seeds]
    start = time.perf_counter()
    report = {
        "suite": FLAGS.suite,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": machine.machine_info("cpu" if FLAGS.suite == "cpu" else "see runs"),
        "backend": keras.backend.backend(),
        "command": " ".join(
            [f"KERAS_BACKEND={keras.backend.backend()}", "python"] + sys.argv
        ),
        "code": code_version(ROOT),
        "seeds": seeds,
        "methods": methods,
        "datasets": [],
    }
    datasets = suite_datasets(FLAGS.suite)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    stem = os.path.join(
        FLAGS.output_dir,
        "accuracy_{}_{}_{}_{}{}".format(
            FLAGS.suite,
            "_".join(d["key"] for d in datasets),
            report["backend"],
            report["date"][:10],
            f"_{FLAGS.part}" if FLAGS.part else "",
        ),
    )
    partial = stem + ".partial.json"

    def save_partial(dataset, runs):
        # After every run, so an interrupted suite can still be reported
        # (--report_from=<this file>).
        done = dict(dataset, runs=runs, summary=summarize(runs))
        snapshot = dict(
            report,
            datasets=report["datasets"] + [done],
            wall_seconds=time.perf_counter() - start,
            interrupted=True,
        )
        with open(partial, "w") as f:
            json.dump(snapshot, f, indent=1)

    chosen = {d["key"]: _chosen_weights(d, methods) for d in datasets}
    for dataset in datasets:
        weights, tags = chosen[dataset["key"]]
        if FLAGS.tune:
            if "validation" not in dataset:
                raise app.UsageError(
                    f"--tune: {dataset['key']} has no validation split."
                )
            tune_seeds = [int(s) for s in FLAGS.tune_seeds]
            weights, tags, dataset["tuning"] = tune_dataset(
                dataset, methods, tune_seeds, print, seeds, FLAGS.tune_extend
            )
        runs = run_dataset(
            dataset,
            methods,
            seeds,
            print,
            lambda runs, d=dataset: save_partial(d, runs),
            weights=weights,
            tags=tags,
            validate="validation" in dataset,  # Seconds per run; kept.
        )
        report["datasets"].append(dict(dataset, runs=runs, summary=summarize(runs)))
    report["wall_seconds"] = time.perf_counter() - start
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    if os.path.exists(partial):
        os.remove(partial)
    write_report(report, stem)


if __name__ == "__main__":
    define_flags()
    app.run(main)
