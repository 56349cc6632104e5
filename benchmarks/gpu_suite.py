"""The GPU figure of keras_kd in one command: throughput and CIFAR-10 accuracy.

JAX backend, no TensorFlow needed (data through `kd.data.EpochBatches`,
JPEGs decoded with Pillow where TensorFlow is absent). Two parts:

1. Throughput, batch 256, resnet32x4 -> resnet8x4, float32 and
   mixed_bfloat16: images/s (median and spread over `--repeats`, rows timed
   round-robin after a warm-up that compiles) and device memory per row of
   the student alone, the teacher's forward pass, the fused limit
   `1/(1/student + 1/teacher)`, keras.distillation logits and
   logits+feature KD, kd logits, logits+feature, FA, AT, AFD, RTK, DLKD, kd
   logits with on-device crop+flip (`kd.data.RandomCropFlip`), the offline
   teacher (`replay_rows`: the recording's own cost and storage, the
   student alone and KD from the record on one replayed crop+flip
   stream), and PyTorch eager and `torch.compile` KD loops on twin models.
2. Accuracy on CIFAR-10 (the JPEG copy, `--data_dir`): a resnet32x4
   teacher, then resnet8x4 students for `--student_epochs` (60) epochs:
   alone, keras.distillation KD (with a `keras.losses.KLDivergence()`
   instance), kd KD and kd KD+FA; one seed, the same batch order and host
   crop+flip for every run; test accuracy and wall time per run.

Writes `gpu_suite_<device>_<date>.{json,md,png}` to `--output_dir` and
checks the targets (see `TARGETS`). `--smoke` runs tiny settings (small
models, synthetic JPEGs, a few steps) on CPU so the script is known to
work before it meets a GPU. benchmarks/README.md has the GPU command.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX would otherwise take 75% of the GPU up front: per-row memory would
# mean nothing and the PyTorch rows could not allocate.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memory_sampler  # noqa: E402
import replay_rows  # noqa: E402
import report_files  # noqa: E402
import throughput as tp  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import machine  # noqa: E402

ROWS = (
    "student",
    "teacher_forward",
    "keras_logits",
    "keras_logits_feature",
    "kd_logits",
    "kd_logits_feature",
    "kd_fa",
    "kd_at",
    "kd_afd",
    "kd_rtk",
    "kd_dlkd",
    "kd_logits_augment",
    "student_replay",
    "kd_recorded",
    "torch_eager",
    "torch_compile",
)
DESCRIPTIONS = dict(
    tp.DESCRIPTIONS,
    kd_logits_augment=("kd: logits KD, on-device crop+flip"),
    torch_eager="PyTorch eager KD loop",
    torch_compile="PyTorch torch.compile KD loop",
    **replay_rows.DESCRIPTIONS,
)
# (name, numerator row, denominator row, goal, policy or None for every one).
TARGETS = (
    ("kd logits KD vs fused limit", "kd_logits", "fused_limit", 0.95, None),
    (
        "kd logits+feature vs keras.distillation",
        "kd_logits_feature",
        "keras_logits_feature",
        1.3,
        "float32",
    ),
    ("on-device crop+flip vs none", "kd_logits_augment", "kd_logits", 0.9, None),
    ("kd KD vs PyTorch eager", "kd_logits", "torch_eager", 1.9, None),
    (
        "recorded-teacher KD vs student alone (same replayed stream)",
        "kd_recorded",
        "student_replay",
        0.9,
        None,
    ),
)
ACCURACY_TARGET = {"run": "kd_kd", "accuracy": 0.888, "wall_s": 65.0}
# Smoke: the smallest zoo ResNet as both models, every row in float32 and
# the rows that differ by policy in mixed_bfloat16 (compilation dominates).
SMOKE_BF16_ROWS = (
    "student",
    "teacher_forward",
    "kd_logits",
    "kd_logits_augment",
    "student_replay",
    "kd_recorded",
    "torch_eager",
)
SMOKE = {
    "teacher": "resnet8x4",
    "student": "resnet8x4",
    "batch_size": 32,
    "steps": 2,
    "repeats": 2,
    "warmup_steps": 1,
    "teacher_epochs": 1,
    "student_epochs": 1,
    "train_limit": 256,
    "test_limit": 128,
    "steps_per_execution": 1,
    "lr": 0.01,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--smoke",
        action="store_true",
        help="Tiny settings on synthetic JPEGs (a CPU check).",
    )
    p.add_argument("--parts", default="throughput,accuracy")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--policies", default="float32,mixed_bfloat16")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--steps", type=int, default=20, help="Timed steps per repeat and row."
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument(
        "--data_dir",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ".data",
            "cifar10_jpeg",
        ),
        help="npz folder (JPEG format) of CIFAR-10 (git-ignored .data/).",
    )
    p.add_argument("--teacher_epochs", type=int, default=30)
    p.add_argument("--student_epochs", type=int, default=60)
    p.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="SGD (momentum 0.9) peak LR: one warm-up epoch, then cosine decay.",
    )
    p.add_argument("--accuracy_policy", default="mixed_bfloat16")
    p.add_argument(
        "--steps_per_execution",
        type=int,
        default=8,
        help="Accuracy runs: training steps per compiled call "
        "(JAX unrolls them: compile time grows with it).",
    )
    p.add_argument("--train_limit", type=int, default=0)
    p.add_argument("--test_limit", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=8,
        help="Threads preparing the accuracy runs' batches.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.parts = args.parts.split(",")
    args.rows = [r for r in ROWS if r in args.rows.split(",")]
    args.policies = args.policies.split(",")
    return args


# Throughput.


def _torch_row(config, teacher, student, policy):
    runner = tp.build_torch_runner(teacher, student)
    if isinstance(runner, str):
        return runner
    torch = runner.torch
    if policy == "mixed_bfloat16":  # bf16 autocast needs no loss scaling.
        runner.autocast_dtype = torch.bfloat16
        runner.scaler = torch.amp.GradScaler("cuda", enabled=False)
    if config == "torch_compile":
        runner.student = torch.compile(runner.student)
        runner.teacher = torch.compile(runner.teacher)
    return runner


def build_row(config, teacher, make_student, feature_layer, policy, replay):
    """A callable timing one pass over `(x, y)`, or a skip reason (str)."""
    if config in replay_rows.ROWS:
        return replay.runner(config)
    if config.startswith("torch_"):
        return _torch_row(config, teacher, make_student(), policy)
    if config == "kd_logits_augment":
        student = make_student()
        model = kd.Distiller(
            teacher,
            student,
            augmentation=kd.data.RandomCropFlip(seed=0),
            **tp._kd_terms("kd_logits", teacher, student, feature_layer),
        )
        model.compile(optimizer=tp._optimizer(), loss=tp._ce())
        return tp.KerasRunner(model)
    num_classes = teacher.output.shape[-1]
    return tp.build_runner(config, teacher, make_student, feature_layer, num_classes)


def _device_bytes(torch_row):
    if torch_row:
        import torch

        return (
            torch.cuda.max_memory_allocated() if (torch.cuda.is_available()) else None
        )
    return memory_sampler.device_memory_bytes()


def throughput_policy(args, policy, log):
    """The rows of one dtype policy, timed round-robin."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(args.seed)
    model_args = {"num_classes": 10, "input_shape": (32, 32, 3)}
    teacher = kd.models.get(args.teacher, **model_args)
    teacher.compile()
    make_student = lambda: kd.models.get(args.student, **model_args)  # noqa
    feature_layer = tp.same_shape_layer(teacher, make_student())
    x, y = tp.make_data(args.batch_size, args.steps, (32, 32, 3), 10, args.seed)
    warm = args.batch_size * args.warmup_steps
    configs = ["student", "teacher_forward"] + [
        r
        for r in args.rows
        if r not in ("student", "teacher_forward")
        and (policy == "float32" or not args.smoke or r in SMOKE_BF16_ROWS)
    ]
    runners, rows = {}, {}
    replay = None
    if any(c in replay_rows.ROWS for c in configs):
        replay = replay_rows.ReplayRows(
            teacher,
            make_student,
            args.batch_size,
            args.steps,
            args.workers,
            tempfile.mkdtemp(),
            args.seed,
        )
        log(f"[{policy}] record: {replay.record_row}")
    with memory_sampler.MemorySampler() as sampler:
        for config in configs:
            torch_row = config.startswith("torch_")
            if torch_row and tp.torch_installed():
                import torch

                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            sampler.label = None if torch_row else config
            try:
                runner = build_row(
                    config, teacher, make_student, feature_layer, policy, replay
                )
                if not isinstance(runner, str):
                    runner(x[:warm], y[:warm], args.batch_size)
            except Exception as e:  # A row must not sink the suite.
                runner = f"failed: {type(e).__name__}: {e}"[:300]
            sampler.label = None
            if isinstance(runner, str):
                rows[config] = {"skipped": runner}
                log(f"[{policy}] skip {config}: {runner}")
                continue
            runners[config] = runner
            rows[config] = {"warmup_s": time.perf_counter() - start}
            if torch_row:
                rows[config]["device_bytes"] = _device_bytes(True)
            log(f"[{policy}] warmed up {config} in {rows[config]['warmup_s']:.1f} s")
        times = {config: [] for config in runners}
        for _ in range(args.repeats):
            for config, runner in runners.items():
                sampler.label = None if config.startswith("torch_") else config
                times[config].append(runner(x, y, args.batch_size))
                sampler.label = None
        peaks = sampler.peaks
    images = args.batch_size * args.steps
    rates = {c: images / np.asarray(t) for c, t in times.items()}
    if "student" in rates and "teacher_forward" in rates:
        rates["fused_limit"] = 1 / (1 / rates["student"] + 1 / rates["teacher_forward"])
        rows["fused_limit"] = {}
    out = []
    for config in ["student", "teacher_forward", "fused_limit"] + configs[2:]:
        row = {
            "policy": policy,
            "config": config,
            "description": DESCRIPTIONS[config],
            **rows.get(config, {}),
        }
        if config in rates:
            row["images_per_s"] = report_files.summary(rates[config])
            row["per_repeat_images_per_s"] = [float(r) for r in rates[config]]
            device = row.pop("device_bytes", None) or (
                peaks.get(config, {}).get("device")
            )
            row["peak_device_mb"] = None if device is None else device / 2**20
        out.append(row)
    if replay is not None:
        out.append(
            {
                "policy": policy,
                "config": "record",
                "description": "{} ({:.0f} bytes/example/epoch)".format(
                    replay_rows.DESCRIPTIONS["record"],
                    replay.record_row["bytes_per_example_epoch"],
                ),
                "images_per_s": report_files.summary(
                    [replay.record_row["images_per_s"]]
                ),
                "bytes_per_example_epoch": replay.record_row["bytes_per_example_epoch"],
            }
        )
    del runners, teacher, replay
    gc.collect()
    keras.backend.clear_session()
    return out, rates


def targets(rates_by_policy):
    """The throughput targets: ratios of medians within one run."""
    results = []
    for name, a, b, goal, only in TARGETS:
        for policy, rates in rates_by_policy.items():
            if only not in (None, policy):
                continue
            value = None
            if a in rates and b in rates:
                value = float(np.median(rates[a] / rates[b]))
            results.append(
                {
                    "name": f"{name} ({policy})",
                    "ratio": value,
                    "goal": goal,
                    "met": None if value is None else value >= goal,
                }
            )
    return results


# Accuracy.


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


def fit_and_test(name, model, student, data, args, epochs, log):
    """Fits `model` for `epochs`; returns the student's test accuracy and
    the fit's wall time (compilation included)."""
    x, y, x_test, y_test, mean, std = data
    train = kd.data.EpochBatches(
        x,
        y,
        args.batch_size,
        seed=args.seed,
        augment=True,
        normalize=(mean, std),
        drop_remainder=True,
        workers=args.workers,
    )
    _compile(model, args, epochs, len(train))
    timer = kd.callbacks.TrainTimer()
    start = time.perf_counter()
    model.fit(train, epochs=epochs, callbacks=[timer], verbose=0)
    wall = time.perf_counter() - start
    logits = student.predict(
        ((x_test - mean) / std).astype("float32"), batch_size=1024, verbose=0
    )
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    log(f"[accuracy] {name}: {100 * accuracy:.2f} % in {wall:.1f} s")
    return {
        "run": name,
        "test_accuracy": accuracy,
        "wall_s": wall,
        "train_s": timer.seconds,
        "epochs": epochs,
        "images_per_s": len(x) * epochs / timer.seconds,
    }


def accuracy_part(args, log):
    data_dir = args.data_dir
    if args.smoke and not os.path.isdir(data_dir):
        data_dir = synthetic_jpegs(
            tempfile.mkdtemp(), args.train_limit, args.test_limit
        )
    start = time.perf_counter()
    (x, y), (x_test, y_test), _ = kd.data.load(f"npz:{data_dir}")
    decode_s = time.perf_counter() - start
    if args.train_limit:
        x, y = x[: args.train_limit], y[: args.train_limit]
    if args.test_limit:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    mean, std = kd.data.channel_stats(x)
    data = (x, y, x_test.astype("float32"), y_test, mean, std)
    keras.mixed_precision.set_global_policy(args.accuracy_policy)
    model = lambda name, seed: (  # noqa: E731
        keras.utils.set_random_seed(seed),
        kd.models.get(name, num_classes=10, input_shape=(32, 32, 3), weight_decay=5e-4),
    )[1]
    teacher = model(args.teacher, args.seed)
    runs = [
        fit_and_test("teacher", teacher, teacher, data, args, args.teacher_epochs, log)
    ]
    teacher.trainable = False
    for name in ("student", "keras_kd", "kd_kd", "kd_fa"):
        student = model(args.student, args.seed + 1)
        if name == "student":
            trained = student
        elif name == "keras_kd":
            trained = keras.distillation.Distiller(
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
        else:
            trained = kd.Distiller(
                teacher,
                student,
                **kd.presets.build("kd" if name == "kd_kd" else "fa", teacher, student),
            )
        try:  # A diverging run is recorded, not fatal.
            runs.append(
                fit_and_test(
                    name, trained, student, data, args, args.student_epochs, log
                )
            )
        except FloatingPointError as e:
            log(f"[accuracy] {name} failed: {e}")
            runs.append({"run": name, "failed": str(e)[:300]})
    decoder = "tf.io" if kd.data.tensorflow_available() else "Pillow"
    return {
        "runs": runs,
        "data": f"npz:{data_dir}",
        "jpeg_decoder": decoder,
        "decode_s": decode_s,
        "train_images": int(len(x)),
        "test_images": int(len(x_test)),
        "policy": args.accuracy_policy,
    }


# Report.


def format_markdown(result):
    s = result["settings"]
    m = result["machine"]
    lines = [
        f"GPU suite, {result['backend']} on {m['device']} "
        f"({m['device_name']}), {s['teacher']} -> {s['student']}, "
        f"{result['date']}, wall {result['wall_s']:.0f} s",
        "",
    ]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    if result.get("throughput"):
        lines += [
            f"Throughput: batch {s['batch_size']}, {s['steps']} steps x"
            f" {s['repeats']} repeats.",
            "",
            "| policy | row | images/s (median) | spread % | "
            "peak device MB | warm-up s |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["throughput"]:
            if "skipped" in row:
                lines.append(
                    f"| {row['policy']} | {row['description']} | "
                    f"skipped: {row['skipped']} | | | |"
                )
                continue
            ips = row["images_per_s"]
            lines.append(
                f"| {row['policy']} | {row['description']} | "
                f"{ips['median']:.0f} | {ips['spread_pct']:.0f} | "
                f"{fmt(row.get('peak_device_mb'), '.0f')} | "
                f"{fmt(row.get('warmup_s'), '.1f')} |"
            )
    if result.get("accuracy"):
        acc = result["accuracy"]
        lines += [
            "",
            f"Accuracy: {acc['data']} ({acc['train_images']} train,"
            f" {acc['test_images']} test; JPEGs decoded with "
            f"{acc['jpeg_decoder']}), {acc['policy']}.",
            "",
            "| run | epochs | test accuracy % | wall s | images/s |",
            "|---|---|---|---|---|",
        ]
        for run in acc["runs"]:
            if "failed" in run:
                lines.append(f"| {run['run']} | failed: {run['failed']} | | | |")
                continue
            lines.append(
                f"| {run['run']} | {run['epochs']} | "
                f"{100 * run['test_accuracy']:.2f} | "
                f"{run['wall_s']:.1f} | {run['images_per_s']:.0f} |"
            )
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['name']} | {fmt(t['ratio'], '.3f')} | "
            f"{'≤' if t.get('at_most') else '≥'} {t['goal']} | "
            f"{t['met']} |"
        )
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def plot(result, plt):
    rows = [r for r in result.get("throughput", []) if "images_per_s" in r]
    runs = [r for r in result.get("accuracy", {}).get("runs", []) if "failed" not in r]
    figure, axes = plt.subplots(1, 2, figsize=(14, 0.3 * len(rows) + 2))
    labels = [f"{r['description']} [{r['policy']}]" for r in rows]
    medians = [r["images_per_s"]["median"] for r in rows]
    errors = [
        [m - r["images_per_s"]["min"] for m, r in zip(medians, rows)],
        [r["images_per_s"]["max"] - m for m, r in zip(medians, rows)],
    ]
    axes[0].barh(labels, medians, xerr=errors)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("images/s (median, min-max)")
    axes[1].bar([r["run"] for r in runs], [100 * r["test_accuracy"] for r in runs])
    axes[1].set_ylabel("test accuracy %")
    figure.suptitle(f"keras_kd GPU suite, {result['machine']['device_name']}")
    return figure


def main(argv=None, log=print):
    args = parse_args(argv)
    wall = time.perf_counter()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": machine.machine_info(),
        "backend": keras.backend.backend(),
        "versions": report_files.versions(),
        "command": " ".join(["python"] + sys.argv)
        if argv is None
        else ("gpu_suite.main(" + repr(argv) + ")"),
        "settings": {
            k: getattr(args, k)
            for k in (
                "smoke",
                "teacher",
                "student",
                "batch_size",
                "steps",
                "repeats",
                "warmup_steps",
                "policies",
                "teacher_epochs",
                "student_epochs",
                "lr",
                "seed",
                "train_limit",
                "test_limit",
            )
        },
        "throughput": [],
        "targets": [],
    }
    if "throughput" in args.parts:
        rates = {}
        for policy in args.policies:
            rows, rates[policy] = throughput_policy(args, policy, log)
            result["throughput"] += rows
        result["targets"] += targets(rates)
    if "accuracy" in args.parts:
        result["accuracy"] = accuracy_part(args, log)
        runs = {r["run"]: r for r in result["accuracy"]["runs"]}
        goal = ACCURACY_TARGET
        run = runs[goal["run"]]
        if "failed" in run:
            run = {"test_accuracy": 0.0, "wall_s": float("inf")}
        result["targets"] += [
            {
                "name": f"{goal['run']} test accuracy",
                "goal": goal["accuracy"],
                "ratio": run["test_accuracy"],
                "met": run["test_accuracy"] >= goal["accuracy"],
            },
            {
                "name": f"{goal['run']} wall s",
                "goal": goal["wall_s"],
                "ratio": run["wall_s"],
                "at_most": True,
                "met": run["wall_s"] <= goal["wall_s"],
            },
        ]
    result["versions"] = report_files.versions()  # torch, once imported.
    result["wall_s"] = time.perf_counter() - wall
    markdown = format_markdown(result)
    log(markdown)
    stem = os.path.join(
        args.output_dir,
        "gpu_suite_{}_{}{}".format(
            machine.device_kind(), result["date"][:10], "_smoke" if args.smoke else ""
        ),
    )
    result["files"] = report_files.write_outputs(stem, result, markdown, plot, log=log)
    log(f"wrote {', '.join(result['files'])} in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
