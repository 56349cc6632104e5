"""The throughput part of `benchmarks/gpu_suite.py`: its rows and targets.

`throughput_policy(args, policy, log)` builds every row of `args.rows` for
one dtype policy (the rows of `throughput_rows.py`, kd logits KD with
on-device crop+flip, the offline-teacher rows of `replay_rows.py`, and the
PyTorch eager and `torch.compile` loops), warms each up (compilation),
times them round-robin over `args.repeats` and returns the table rows and
the per-repeat images/s; `targets` turns those rates into the suite's
throughput targets (`TARGETS`). A row that fails is recorded as skipped.

No TensorFlow: imported by gpu_suite.py, which sets the JAX backend (and
`XLA_PYTHON_CLIENT_PREALLOCATE=false`) before Keras is imported.
"""

import gc
import tempfile
import time

import keras
import memory_sampler
import numpy as np
import replay_rows
import report_files
import throughput_rows as tp

import keras_kd as kd

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
# --smoke (gpu_suite.SMOKE): every row in float32, and in mixed_bfloat16
# only the rows that differ by policy (compilation dominates).
SMOKE_BF16_ROWS = (
    "student",
    "teacher_forward",
    "kd_logits",
    "kd_logits_augment",
    "student_replay",
    "kd_recorded",
    "torch_eager",
)


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
