"""The accuracy part of `benchmarks/gpu_suite.py`: CIFAR-10 training runs.

`accuracy_part(args, results, budget, log)` trains a teacher (or loads it
from `--teacher_weights` when that file exists, and saves it there when it
does not), then the students of `--runs` in their order (`RUNS`: the
target's kd KD first; alone, keras.distillation KD, kd KD+FA) on the same
batches (`kd.data.EpochBatches`, host crop+flip), saving `results` after
each run: test accuracy and wall time. Budget: a run is started only when
the estimate from the runs measured so far fits in what is left
(`run_estimate`: their epoch times scaled by each run's multiply-adds per
example; the teacher's own: `--first_row_s`), and
`BudgetGuard` stops a run whose remaining epochs, at the speed of its
epochs after the first, would not end in time. A run that raises (a
non-finite loss, say) is recorded as failed with its error; when the
teacher fails, the KD runs are skipped. `accuracy_targets` checks
`ACCURACY_TARGET`. `synthetic_jpegs` writes the small JPEG folder
`--smoke` trains on when no CIFAR-10 copy is there.

No TensorFlow: JPEGs are decoded with Pillow where TensorFlow is absent;
imported by gpu_suite.py, which sets the JAX backend first.
"""

import io
import math
import os
import tempfile

import keras
import numpy as np
import throughput_rows as tp

import keras_kd as kd

ACCURACY_TARGET = {"run": "kd_kd", "accuracy": 0.888, "wall_s": 65.0}
RUNS = ("kd_kd", "student", "keras_kd", "kd_fa")


def synthetic_jpegs(folder, train, test, seed=0):
    """A CIFAR-shaped npz folder in the JPEG format (class = colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 32, 32, 3)) + 20 * y[:, None, None, None]
        blobs = []
        for image in x.astype("uint8"):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buffer.getvalue(), "uint8"))
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("int64")
        np.savez(
            os.path.join(folder, f"{split}.npz"),
            jpeg=np.concatenate(blobs),
            offsets=offsets,
            y=y,
        )
    return folder


class BudgetGuard(keras.callbacks.Callback):
    """Times each epoch on the suite's clock and stops `fit` when the
    epochs left, at the median speed of the epochs after the first (which
    compiles), and `reserve_s` would not end inside the budget."""

    def __init__(self, budget, epochs, reserve_s):
        super().__init__()
        self.budget, self.epochs, self.reserve_s = budget, epochs, reserve_s
        self.epoch_s = []
        self.stopped = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = tp.now()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(tp.now() - self._start)
        left = self.epochs - len(self.epoch_s)
        if left <= 0 or len(self.epoch_s) < 2:
            return
        need = left * float(np.median(self.epoch_s[1:])) + self.reserve_s
        if need > self.budget.left():
            self.model.stop_training = True
            self.stopped = (
                f"budget: stopped after {len(self.epoch_s)} of {self.epochs} "
                f"epochs (~{need:.0f} s more needed, "
                f"{max(self.budget.left(), 0.0):.0f} s left)"
            )

    def compile_s(self):
        """The first epoch's excess over the others (compilation)."""
        if len(self.epoch_s) < 2:
            return 0.0
        return max(self.epoch_s[0] - float(np.median(self.epoch_s[1:])), 0.0)


def _compile(model, args, epochs, steps):
    warmup = min(steps, epochs * steps // 2)  # One epoch, linear.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, epochs * steps - warmup, warmup_target=args.lr, warmup_steps=warmup
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=tp._ce(),
        steps_per_execution=min(steps, args.steps_per_execution),
    )


def evaluate(student, data):
    """The test accuracy of `student`."""
    x, y, x_test, y_test, mean, std = data
    logits = student.predict(
        ((x_test - mean) / std).astype("float32"), batch_size=1024, verbose=0
    )
    return float(np.mean(np.argmax(logits, -1) == y_test))


def fit_and_test(name, model, student, data, args, epochs, guard):
    """Fits `model` for `epochs` (`guard` may stop it); returns the run's
    record: the student's test accuracy, wall time (compilation and the
    test included) and epoch times."""
    x, y = data[0], data[1]
    train = kd.data.EpochBatches(
        x,
        y,
        args.batch_size,
        seed=args.seed,
        augment=True,
        normalize=(data[4], data[5]),
        drop_remainder=True,
        workers=args.workers,
    )
    _compile(model, args, epochs, len(train))
    timer = kd.callbacks.TrainTimer()
    start = tp.now()
    model.fit(train, epochs=epochs, callbacks=[timer, guard], verbose=0)
    run = {"run": name, "epochs": epochs, "epoch_s": guard.epoch_s}
    if guard.stopped:
        return dict(run, skipped=guard.stopped, wall_s=tp.now() - start)
    fit_s = tp.now() - start
    accuracy = evaluate(student, data)
    return dict(
        run,
        test_accuracy=accuracy,
        wall_s=tp.now() - start,
        fit_s=fit_s,
        train_s=timer.seconds,
        compile_s=guard.compile_s(),
        images_per_s=len(x) * epochs / max(timer.seconds, 1e-9),
    )


def load_data(args):
    """`(x, y, x_test, y_test, mean, std)` and the data's description."""
    data_dir = args.data_dir
    if args.smoke and not os.path.isdir(data_dir):
        data_dir = synthetic_jpegs(
            tempfile.mkdtemp(), args.train_limit, args.test_limit
        )
    start = tp.now()
    (x, y), (x_test, y_test), _ = kd.data.load(f"npz:{data_dir}")
    decode_s = tp.now() - start
    if args.train_limit:
        x, y = x[: args.train_limit], y[: args.train_limit]
    if args.test_limit:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    mean, std = kd.data.channel_stats(x)
    decoder = "tf.io" if kd.data.tensorflow_available() else "Pillow"
    info = {
        "data": f"npz:{data_dir}",
        "jpeg_decoder": decoder,
        "decode_s": decode_s,
        "train_images": int(len(x)),
        "test_images": int(len(x_test)),
        "policy": args.accuracy_policy,
    }
    return (x, y, x_test.astype("float32"), y_test, mean, std), info


def _model(name, seed):
    keras.utils.set_random_seed(seed)
    return kd.models.get(
        name, num_classes=10, input_shape=(32, 32, 3), weight_decay=5e-4
    )


def _trained(name, teacher, student, args):
    """The model `fit` trains for run `name`."""
    if name == "student":
        return student
    if name == "keras_kd":
        return keras.distillation.Distiller(
            teacher,
            student,
            [
                keras.distillation.LogitsDistillation(
                    4.0, loss=keras.losses.KLDivergence()
                )
            ],
            [1.0],
            student_loss_weight=0.1,
        )
    preset = "kd" if name == "kd_kd" else "fa"
    return kd.Distiller(
        teacher,
        student,
        **kd.presets.build(preset, teacher, student, epochs=args.student_epochs),
    )


def forward_macs(model):
    """Multiply-adds of one example's forward pass (Conv2D and Dense)."""
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            h, w, c = layer.output.shape[1:]
            cin = layer.input.shape[-1] // layer.groups
            total += h * w * c * cin * math.prod(layer.kernel_size)
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.kernel.shape)
    return total


def run_costs(teacher, student):
    """Each run's training multiply-adds per example: forward and backward
    (2x forward) of the net it trains, plus the teacher's forward for KD."""
    t, s = forward_macs(teacher), forward_macs(student)
    costs = {run: t + 3 * s for run in RUNS}
    return dict(costs, teacher=3 * t, student=3 * s)


def run_estimate(name, runs, costs, epochs):
    """Seconds for run `name`: 1.25x (the longest compilation measured +
    `epochs` x its cost x the slowest epoch per unit of cost of any finished
    run + the longest test pass), or None before a run of 2+ epochs ends."""
    done = [r for r in runs if "fit_s" in r and len(r["epoch_s"]) > 1]
    if not done:
        return None
    per_cost = max(float(np.median(r["epoch_s"][1:])) / costs[r["run"]] for r in done)
    compile_s = max(r["compile_s"] for r in done)
    test_s = max(r["wall_s"] - r["fit_s"] for r in done)
    return 1.25 * (compile_s + epochs * costs[name] * per_cost + test_s)


def _teacher_run(args, data, budget):
    """The teacher and its run record (trained, loaded, skipped, failed)."""
    teacher = _model(args.teacher, args.seed)
    path = args.teacher_weights
    if path and os.path.exists(path):
        teacher.load_weights(path)
        run = {"run": "teacher", "loaded": path}
        run["test_accuracy"] = evaluate(teacher, data)
        run["epochs"], run["wall_s"], run["epoch_s"] = 0, 0.0, []
        return teacher, run
    reason = budget.check(None)
    if reason:
        return teacher, {"run": "teacher", "skipped": reason}
    guard = BudgetGuard(budget, args.teacher_epochs, 10.0)
    run = fit_and_test(
        "teacher", teacher, teacher, data, args, args.teacher_epochs, guard
    )
    if path and "test_accuracy" in run:
        teacher.save_weights(path)
        run["saved"] = path
    return teacher, run


def _run_or_record(name, make, results, log):
    """Runs `make()` (a run record), recording any error as a failure."""
    try:
        run = make()
    except Exception as e:  # A diverging or broken run must not sink the rest.
        run = {"run": name, "failed": f"{type(e).__name__}: {e}"[:500]}
    results.result["accuracy"]["runs"].append(run)
    log(results.run_line(run))
    results.save()
    return run


def _student_run(name, teacher, data, args, budget, reserve_s):
    student = _model(args.student, args.seed + 1)
    trained = _trained(name, teacher, student, args)
    guard = BudgetGuard(budget, args.student_epochs, reserve_s)
    return fit_and_test(name, trained, student, data, args, args.student_epochs, guard)


def accuracy_part(args, results, budget, log):
    """The teacher, then each student run of `args.runs` that fits."""
    data, info = load_data(args)
    results.result["accuracy"] = dict(info, runs=[])
    runs = results.result["accuracy"]["runs"]
    keras.mixed_precision.set_global_policy(args.accuracy_policy)
    box = {}

    def teacher_run():
        box["teacher"], run = _teacher_run(args, data, budget)
        return run

    teacher = _run_or_record("teacher", teacher_run, results, log)
    if "budget" in teacher.get("skipped", ""):
        budget.record("accuracy teacher", teacher["skipped"])
    if "test_accuracy" in teacher:
        box["teacher"].trainable = False
    reserve_s = teacher.get("wall_s", 0.0) - teacher.get("fit_s", 0.0) + 5.0
    built = box["teacher"] if "teacher" in box else _model(args.teacher, 0)
    costs = run_costs(built, _model(args.student, 0))
    for name in args.runs:
        what = f"accuracy {name}"
        if name != "student" and "test_accuracy" not in teacher:
            reason = "no trained teacher (its run was skipped or failed)"
        else:
            estimate = run_estimate(name, runs, costs, args.student_epochs)
            reason = budget.check(estimate, what)
        if reason:
            skipped = {"run": name, "skipped": reason}
            _run_or_record(name, lambda r=skipped: r, results, log)
            continue
        run = _run_or_record(
            name,
            lambda n=name: _student_run(
                n, box.get("teacher"), data, args, budget, reserve_s
            ),
            results,
            log,
        )
        if "budget" in run.get("skipped", ""):
            budget.record(what, run["skipped"])
    keras.mixed_precision.set_global_policy("float32")


def accuracy_targets(runs):
    """The accuracy targets (`ACCURACY_TARGET`) of `accuracy_part`'s runs; a
    failed, skipped or missing run meets neither."""
    goal = ACCURACY_TARGET
    run = {r["run"]: r for r in runs}.get(goal["run"], {})
    done = "test_accuracy" in run
    accuracy = run["test_accuracy"] if done else None
    wall = run["wall_s"] if done else None
    return [
        {
            "name": f"{goal['run']} test accuracy",
            "goal": goal["accuracy"],
            "ratio": accuracy,
            "met": done and accuracy >= goal["accuracy"],
        },
        {
            "name": f"{goal['run']} wall s",
            "goal": goal["wall_s"],
            "ratio": wall,
            "at_most": True,
            "met": done and wall <= goal["wall_s"],
        },
    ]
