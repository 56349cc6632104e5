"""Offline distillation: throughput, recording cost, storage, accuracy.

Throughput part (`--parts=throughput`), on the current backend and device:
images per second of one `fit` over `--steps` batches, for

1. `student`: the student alone (cross-entropy), on the replayed stream
   (the same host crop+flip as every row);
2. `recorded_kd`: `kd.Distiller` with a `kd.offline.RecordedTeacher`
   (float16 logits), Hinton KD;
3. `live_kd`: the same Distiller with the live teacher;

plus the recording's own cost (images/s of `kd.offline.record`, full and
top-k) and its storage (shard bytes per example per epoch). Rows are
warmed up (compiled) first and timed `--repeats` times round-robin; the
median is reported. Target: recorded_kd ≥ 0.9 × student.

Accuracy part (`--parts=accuracy`): scikit-learn digits with the recipes'
digits protocol (teacher `digits_cnn_large` on the training split, student
`digits_cnn_small` on its first 100 images, Adam 3e-3, batch 32, KD T=4
at 0.5 + CE 0.5), with a 1-pixel crop (no flip on digits), per seed: live
KD, recorded float16 logits, recorded top-3, and a 10-epoch record cycled
over all epochs; test accuracy mean ± std over `--seeds`.

Usage:

```
python benchmarks/offline.py --output_dir=benchmarks/results
```
"""

import datetime
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

import keras_kd as kd  # noqa: E402

FLAGS = flags.FLAGS
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def define_flags():
    flags.DEFINE_list("parts", ["throughput", "accuracy"], "Parts to run.")
    flags.DEFINE_string("teacher", "resnet32x4", "Teacher from keras_kd.models.")
    flags.DEFINE_string("student", "resnet8x4", "Student from keras_kd.models.")
    flags.DEFINE_integer("batch_size", 64, "Batch size (throughput).")
    flags.DEFINE_integer("steps", 3, "Timed steps per fit (throughput).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats, round-robin.")
    flags.DEFINE_integer("top_k", 5, "k of the top-k storage rows.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Accuracy seeds.")
    flags.DEFINE_integer("epochs", 120, "Student epochs (accuracy).")
    flags.DEFINE_integer("teacher_epochs", 30, "Teacher epochs (accuracy).")
    flags.DEFINE_enum(
        "clock",
        "cpu",
        list(CLOCKS),
        "'cpu' (process CPU seconds, for a shared CPU) or 'wall'.",
    )
    flags.DEFINE_string("output_dir", None, "Where to write JSON and table.")


def _ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _distiller(teacher, student, temperature=4.0):
    distiller = kd.Distiller(
        teacher,
        student,
        kd.losses.LogitsDistillation(temperature),
        student_loss_weight=0.5,
    )
    distiller.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss=_ce())
    return distiller


def _shard_bytes(path):
    return sum(
        os.path.getsize(os.path.join(path, f))
        for f in os.listdir(path)
        if f.endswith(".npz")
    )


def throughput(work, clock, log):
    batch, steps = FLAGS.batch_size, FLAGS.steps
    n = batch * steps
    keras.utils.set_random_seed(0)
    teacher = kd.models.get(FLAGS.teacher)
    shape, classes = teacher.inputs[0].shape[1:], teacher.outputs[0].shape[-1]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *shape)).astype("uint8")
    y = rng.integers(0, classes, n).astype("int64")
    spec = kd.offline.CropFlip(padding=4)
    rows = {}
    records = {}
    for name, top_k in (("full", None), ("top_k", FLAGS.top_k)):
        path = os.path.join(work, name)
        # The first call compiles the teacher's predict function.
        kd.offline.record(
            teacher,
            (x[:batch], y[:batch]),
            spec,
            1,
            os.path.join(work, f"warm_{name}"),
            0,
            top_k=top_k,
            batch_size=batch,
            verbose=0,
        )
        start = clock()
        kd.offline.record(
            teacher, (x, y), spec, 1, path, 0, top_k=top_k, batch_size=batch, verbose=0
        )
        seconds = clock() - start
        records[name] = {
            "images_per_s": n / seconds,
            "bytes_per_example_epoch": _shard_bytes(path) / n,
            "manifest_bytes": os.path.getsize(os.path.join(path, "manifest.json")),
        }
        log(f"record {name}: {records[name]}")
    live = kd.offline.dataset(x, y, batch, augmentation=spec, seed=0, targets=False)
    recorded = kd.offline.dataset(x, y, batch, record=os.path.join(work, "full"))
    student_alone = kd.models.get(FLAGS.student, num_classes=classes)
    student_alone.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss=_ce())
    runners = {
        "student": (student_alone, live),
        "recorded_kd": (
            _distiller(
                kd.offline.RecordedTeacher(os.path.join(work, "full")),
                kd.models.get(FLAGS.student, num_classes=classes),
            ),
            recorded,
        ),
        "live_kd": (
            _distiller(teacher, kd.models.get(FLAGS.student, num_classes=classes)),
            live,
        ),
    }
    for model, data in runners.values():  # Compile, untimed.
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    times = {name: [] for name in runners}
    for _ in range(FLAGS.repeats):
        for name, (model, data) in runners.items():
            start = clock()
            model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
            times[name].append(clock() - start)
    for name, values in times.items():
        rates = [n / t for t in values]
        rows[name] = {
            "images_per_s": float(np.median(rates)),
            "spread_pct": float(100 * (max(rates) - min(rates)) / np.median(rates)),
        }
        log(f"{name}: {rows[name]}")
    ratio = rows["recorded_kd"]["images_per_s"] / rows["student"]["images_per_s"]
    return {
        "rows": rows,
        "record": records,
        "recorded_vs_student": ratio,
        "live_vs_student": rows["live_kd"]["images_per_s"]
        / rows["student"]["images_per_s"],
        "target_met": ratio >= 0.9,
    }


def accuracy(work, log):
    (x, y), (x_test, y_test), _ = kd.data.load("digits")
    x_test = x_test.astype("float32") / 255.0
    spec = kd.offline.CropFlip(padding=1, flip=False)
    keras.utils.set_random_seed(0)
    teacher = kd.models.digits_cnn_large()
    teacher.compile(keras.optimizers.Adam(3e-3), loss=_ce(), metrics=["accuracy"])
    teacher.fit(
        x.astype("float32") / 255.0,
        y,
        batch_size=32,
        epochs=FLAGS.teacher_epochs,
        verbose=0,
    )
    teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)[1]
    log(f"teacher test accuracy {teacher_acc:.4f}")
    xs, ys = x[:100], y[:100]
    epochs, steps = FLAGS.epochs, kd.offline.steps_per_epoch(100, 32)
    results = {
        "live": [],
        "recorded_fp16": [],
        "recorded_top3": [],
        "recorded_fp16_10_epochs_cycled": [],
    }
    for seed in [int(s) for s in FLAGS.seeds]:
        paths = {}
        for name, top_k, rec_epochs in (
            ("fp16", None, epochs),
            ("top3", 3, epochs),
            ("fp16_10", None, 10),
        ):
            paths[name] = os.path.join(work, f"digits_{name}_{seed}")
            kd.offline.record(
                teacher,
                (xs, ys),
                spec,
                rec_epochs,
                paths[name],
                seed,
                top_k=top_k,
                verbose=0,
            )
        runs = {
            "live": (
                teacher,
                kd.offline.dataset(
                    xs,
                    ys,
                    32,
                    augmentation=spec,
                    seed=seed,
                    epochs=epochs,
                    targets=False,
                ),
            ),
            "recorded_fp16": (
                kd.offline.RecordedTeacher(paths["fp16"]),
                kd.offline.dataset(xs, ys, 32, record=paths["fp16"]),
            ),
            "recorded_top3": (
                kd.offline.RecordedTeacher(paths["top3"]),
                kd.offline.dataset(xs, ys, 32, record=paths["top3"]),
            ),
            "recorded_fp16_10_epochs_cycled": (
                kd.offline.RecordedTeacher(paths["fp16_10"]),
                kd.offline.dataset(xs, ys, 32, record=paths["fp16_10"], epochs=epochs),
            ),
        }
        for name, (t, data) in runs.items():
            keras.utils.set_random_seed(seed)
            student = kd.models.digits_cnn_small()
            distiller = kd.Distiller(
                t, student, kd.losses.LogitsDistillation(4.0), student_loss_weight=0.5
            )
            distiller.compile(
                keras.optimizers.Adam(3e-3), loss=_ce(), metrics=["accuracy"]
            )
            distiller.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
            acc = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)[
                "accuracy"
            ]
            results[name].append(float(acc))
            log(f"seed {seed} {name}: {acc:.4f}")
    return {
        "teacher_accuracy": float(teacher_acc),
        "runs": results,
        "summary": {
            name: {"mean": float(np.mean(v)), "std": float(np.std(v))}
            for name, v in results.items()
        },
    }


def markdown(report):
    lines = [
        f"Offline distillation, {report['backend']} on CPU, "
        f"{report['date']}; `{report['command']}`",
        "",
    ]
    if "throughput" in report:
        t = report["throughput"]
        lines += [
            f"Throughput: {FLAGS.teacher} -> {FLAGS.student}, batch "
            f"{FLAGS.batch_size}, {FLAGS.steps} steps x "
            f"{FLAGS.repeats} repeats, {report['clock']} clock.",
            "",
            "| row | images/s (median) | spread % |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['images_per_s']:.1f} | {v['spread_pct']:.0f} |"
            for k, v in t["rows"].items()
        ]
        lines += [
            "",
            f"recorded_kd / student = "
            f"{t['recorded_vs_student']:.2f} (target >= 0.90: "
            f"{t['target_met']}); live_kd / student = "
            f"{t['live_vs_student']:.2f}",
            "",
            "| record | images/s | bytes / example / epoch |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['images_per_s']:.1f} | {v['bytes_per_example_epoch']:.1f} |"
            for k, v in t["record"].items()
        ]
    if "accuracy" in report:
        a = report["accuracy"]
        lines += [
            "",
            f"Digits accuracy (teacher {a['teacher_accuracy']:.4f}),"
            f" seeds {FLAGS.seeds}, {FLAGS.epochs} epochs:",
            "",
            "| run | test accuracy mean ± std | per seed |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {100 * v['mean']:.2f} ± {100 * v['std']:.2f} | "
            f"{', '.join(f'{100 * r:.2f}' for r in a['runs'][k])} |"
            for k, v in a["summary"].items()
        ]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    clock = CLOCKS[FLAGS.clock]
    work = tempfile.mkdtemp(prefix="kd_offline_")
    report = {
        "backend": keras.backend.backend(),
        "clock": FLAGS.clock,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "command": " ".join(
            [f"KERAS_BACKEND={keras.backend.backend()}", "python"] + sys.argv
        ),
    }
    try:
        if "throughput" in FLAGS.parts:
            report["throughput"] = throughput(work, clock, print)
        if "accuracy" in FLAGS.parts:
            report["accuracy"] = accuracy(work, print)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(report)
    print(text)
    if FLAGS.output_dir:
        stem = os.path.join(
            FLAGS.output_dir,
            f"offline_{'_'.join(FLAGS.parts)}_"
            f"{report['backend']}_cpu_{report['date'][:10]}",
        )
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
