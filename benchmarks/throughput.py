"""Training throughput of distillation configurations, as ratios in one run.

Measures images per second, on the current Keras backend and device, of:

1. `student`: the student trained alone with `fit` (same optimiser): the
   floor of any distillation step's cost;
2. `teacher_forward`: the teacher's inference pass alone (`predict`, a
   compiled function);
3. `fused_limit`: `1 / (1/rate1 + 1/rate2)`, the best a step that runs both
   can do;
4. `keras.distillation.Distiller` with `LogitsDistillation`, and with
   `LogitsDistillation + FeatureDistillation` on same-shape layers;
5. `kd.Distiller` with the same two configurations, plus `FeatureAlignment`
   (non-linear), AT, AFD, RTK, SKD-style linear feature alignment at every
   stage, DLKD (when `kd.losses.DualLevelDistillation` exists) and ReffAKD
   (a `kd.SoftLabelTeacher`, no teacher network);
6. `torch_kd`: the same pair in a plain eager PyTorch KD loop
   (channels_last, autocast under `--mixed_precision`), when torch is
   installed.

Every configuration is built and warmed up first (compilation excluded from
the timings), then timed `--repeats` times round-robin, so load changes on a
shared machine hit all rows alike. Ratios are taken within each repeat and
their median reported. Peak memory per configuration: host RSS sampled every
10 ms while it runs (all configurations live in one process, so the growth
during its warm-up is also recorded), and device memory in use (JAX
`memory_stats`, TensorFlow `get_memory_info`) on accelerators.

Usage (reduced CPU defaults: batch 64, 3 steps):

```
python benchmarks/throughput.py --output_dir=benchmarks/results
KERAS_BACKEND=jax python benchmarks/throughput.py --batch_size=128 \
    --steps=50 --output_dir=benchmarks/results
```
"""

import datetime
import json
import os
import resource
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keras  # noqa: E402
import report_files  # noqa: E402
import torch_twins  # noqa: E402
from memory_sampler import MemorySampler  # noqa: E402
from memory_sampler import host_rss_bytes  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import machine  # noqa: E402

TEMPERATURE = 4.0
KD_CONFIGS = (
    "kd_logits",
    "kd_logits_feature",
    "kd_fa",
    "kd_at",
    "kd_afd",
    "kd_rtk",
    "kd_skd",
    "kd_dlkd",
    "kd_reffakd",
)
ALL_CONFIGS = (
    (
        "student",
        "teacher_forward",
        "keras_logits",
        "keras_logits_feature",
    )
    + KD_CONFIGS
    + ("torch_kd",)
)
DESCRIPTIONS = {
    "student": "student alone (fit, CE)",
    "teacher_forward": "teacher forward alone (predict)",
    "fused_limit": "fused limit 1/(1/r_student + 1/r_teacher)",
    "keras_logits": "keras.distillation: logits KD",
    "keras_logits_feature": "keras.distillation: logits + feature KD",
    "kd_logits": "kd: logits KD",
    "kd_logits_feature": "kd: logits + feature KD",
    "kd_fa": "kd: logits + FeatureAlignment (non-linear)",
    "kd_at": "kd: logits + AT (every stage)",
    "kd_afd": "kd: logits + AFD (every block)",
    "kd_rtk": "kd: logits + RTK (every block)",
    "kd_skd": "kd: SKD, linear alignment at every stage, no logits",
    "kd_dlkd": "kd: DLKD (4 rotated views)",
    "kd_reffakd": "kd: ReffAKD soft-label table (no teacher net)",
    "torch_kd": "PyTorch eager KD loop",
}
# Configurations that run a teacher network each step (the 0.9x target).
LIVE_TEACHER = set(KD_CONFIGS) - {"kd_reffakd"}

FLAGS = flags.FLAGS


def define_flags():
    """The command-line flags (defined only when run as a script, so the
    module can be imported beside other absl programs)."""
    flags.DEFINE_string("teacher", "resnet32x4", "Teacher from keras_kd.models.")
    flags.DEFINE_string("student", "resnet8x4", "Student from keras_kd.models.")
    flags.DEFINE_integer(
        "batch_size", None, "Batch size (default 64 on CPU, 128 on accelerators)."
    )
    flags.DEFINE_integer(
        "steps", None, "Timed steps per repeat (default 3 on CPU, 50 otherwise)."
    )
    flags.DEFINE_integer("repeats", 5, "Timed repeats, round-robin over rows.")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after compilation.")
    flags.DEFINE_bool(
        "mixed_precision",
        False,
        "mixed_float16 on accelerators, mixed_bfloat16 on CPU.",
    )
    flags.DEFINE_list("input_shape", ["32", "32", "3"], "Image shape H,W,C.")
    flags.DEFINE_integer("num_classes", 100, "Number of classes.")
    flags.DEFINE_list(
        "configs",
        list(ALL_CONFIGS),
        "Rows to run (student and teacher_forward are always run).",
    )
    flags.DEFINE_string(
        "feature_layer",
        None,
        "Layer for the feature rows (default: the last stage whose teacher and "
        "student shapes are equal).",
    )
    flags.DEFINE_string("output_dir", None, "Where to write the JSON and table.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_enum(
        "clock",
        "wall",
        list(CLOCKS),
        "What a row's time is: 'wall' (elapsed seconds; use it on a "
        "dedicated machine or an accelerator) or 'cpu' (CPU seconds of this "
        "process, all threads: on a CPU shared with other jobs, a row's "
        "cost stays put while wall time swings with the other jobs' load).",
    )


# Configurations.


def make_data(batch_size, steps, input_shape, num_classes, seed):
    """Standardised random images and labels: throughput does not depend on
    pixel values, and in-memory arrays work on every backend."""
    rng = np.random.default_rng(seed)
    n = batch_size * steps
    x = rng.normal(size=(n, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, size=(n,)).astype("int32")
    return x, y


def same_shape_layer(teacher, student, preferred=None):
    """The last zoo stage whose output shape is equal in both models."""
    names = [preferred] if preferred else kd.models.stage_layer_names(student)
    for name in reversed(names):
        try:
            t, s = teacher.get_layer(name), student.get_layer(name)
        except ValueError:
            continue
        if tuple(t.output.shape) == tuple(s.output.shape):
            return name
    return None


def _optimizer():
    # A small step keeps random-data runs finite (a NaN loss stops
    # kd.Distiller.fit); the update costs the same at any learning rate.
    return keras.optimizers.SGD(1e-4, momentum=0.9)


def _ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _kd_terms(config, teacher, student, feature_layer):
    """The `kd.Distiller` keyword arguments of one configuration, from
    `kd.presets` with the papers' defaults (SKD's stages at weight 1)."""
    presets = {
        "kd_logits": ("kd", {}),
        "kd_logits_feature": ("kd", {}),
        "kd_fa": ("fa", {}),
        "kd_at": ("kd+at", {}),
        "kd_afd": ("afd", {}),
        "kd_rtk": ("rtk", {}),
        "kd_skd": ("skd", {"skd_weight": 1.0}),
        "kd_dlkd": ("dlkd", {}),
    }
    if config not in presets:
        raise ValueError(f"Unknown configuration '{config}'.")
    name, overrides = presets[config]
    if name != "dlkd":  # DLKD has no logits KD term.
        overrides = {"kd_temperature": TEMPERATURE, **overrides}
    kwargs = kd.presets.build(name, teacher, student, **overrides)
    if config == "kd_logits_feature":
        kwargs["distillation_losses"].append(
            kd.losses.FeatureDistillation(feature_layer, feature_layer)
        )
        kwargs["distillation_loss_weights"].append(0.9)
    return kwargs


# Row timers; `run_benchmark(clock=...)` picks one.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


class KerasRunner:
    """Times `fit` (training rows) or `predict` (the teacher row)."""

    def __init__(self, model, predict=False):
        self.model = model
        self.predict = predict

    def __call__(self, x, y, batch_size):
        start = _clock[0]()
        if self.predict:
            self.model.predict(x, batch_size=batch_size, verbose=0)
        else:
            self.model.fit(
                x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0
            )
        return _clock[0]() - start


def build_runner(config, teacher, make_student, feature_layer, num_classes):
    """A callable timing one pass over the data, or a skip reason (str)."""
    if config == "teacher_forward":
        return KerasRunner(teacher, predict=True)
    if config == "torch_kd":
        return build_torch_runner(teacher, make_student())
    student = make_student()
    if config == "student":
        model = student
    elif config.startswith("keras_"):
        losses = [keras.distillation.LogitsDistillation(TEMPERATURE)]
        if config == "keras_logits_feature":
            if feature_layer is None:
                return "no same-shape layer in teacher and student"
            losses.append(
                keras.distillation.FeatureDistillation(
                    "mse", feature_layer, feature_layer
                )
            )
        model = keras.distillation.Distiller(
            teacher, student, losses, [1.0] * len(losses), student_loss_weight=0.1
        )
    elif config == "kd_reffakd":
        rng = np.random.default_rng(0)
        similarity = np.eye(num_classes) + 0.1 * rng.random((num_classes, num_classes))
        table = kd.reffakd.soft_label_table(similarity)
        model = kd.Distiller(
            kd.SoftLabelTeacher(table),
            student,
            kd.losses.LogitsDistillation(TEMPERATURE),
            student_loss_weight=0.1,
        )
    else:
        if config == "kd_dlkd" and not hasattr(kd.losses, "DualLevelDistillation"):
            return "kd.losses.DualLevelDistillation is not in this version"
        if config == "kd_logits_feature" and feature_layer is None:
            return "no same-shape layer in teacher and student"
        model = kd.Distiller(
            teacher, student, **_kd_terms(config, teacher, student, feature_layer)
        )
    model.compile(optimizer=_optimizer(), loss=_ce())
    return KerasRunner(model)


# PyTorch.


def torch_installed():
    return torch_twins.torch_installed()


def build_torch_runner(teacher, student):
    """The PyTorch row's runner (timed with this module's clock)."""
    if not torch_installed():
        return "PyTorch is not installed"
    return torch_twins.build_torch_runner(
        teacher, student, clock=lambda: _clock[0](), temperature=TEMPERATURE
    )


# Measurement.


def run_benchmark(
    teacher="resnet32x4",
    student="resnet8x4",
    batch_size=None,
    steps=None,
    repeats=5,
    warmup_steps=2,
    mixed_precision=False,
    input_shape=(32, 32, 3),
    num_classes=100,
    configs=None,
    feature_layer=None,
    seed=0,
    output_dir=None,
    command=None,
    clock="wall",
    log=print,
):
    """Runs the benchmark and returns its results as a dict (see module
    docstring); writes `throughput_<backend>_<device>_<date>.{json,md}` to
    `output_dir` when given."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}.")
    _clock[0] = CLOCKS[clock]
    kind = machine.device_kind()
    batch_size = batch_size or (64 if kind == "cpu" else 128)
    steps = steps or (3 if kind == "cpu" else 50)
    configs = list(configs or ALL_CONFIGS)
    unknown = sorted(set(configs) - set(ALL_CONFIGS))
    if unknown:
        raise ValueError(
            f"Unknown configurations {unknown}; choose from {ALL_CONFIGS}."
        )
    configs = ["student", "teacher_forward"] + [
        c
        for c in ALL_CONFIGS
        if c in configs and c not in ("student", "teacher_forward")
    ]
    policy = "float32"
    if mixed_precision:
        policy = "mixed_bfloat16" if kind == "cpu" else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)
    input_shape = tuple(int(d) for d in input_shape)
    model_args = {"num_classes": num_classes, "input_shape": input_shape}
    teacher_model = kd.models.get(teacher, **model_args)
    teacher_model.compile()
    make_student = lambda: kd.models.get(student, **model_args)  # noqa: E731
    probe = make_student()
    feature_layer = same_shape_layer(teacher_model, probe, feature_layer)
    x, y = make_data(batch_size, steps, input_shape, num_classes, seed)
    warm_x, warm_y = x[: batch_size * warmup_steps], y[: batch_size * warmup_steps]

    runners, skipped, setup = {}, {}, {}
    with MemorySampler() as sampler:
        for config in configs:
            rss_before = host_rss_bytes()
            sampler.label = config
            start = time.perf_counter()
            runner = build_runner(
                config, teacher_model, make_student, feature_layer, num_classes
            )
            if isinstance(runner, str):
                skipped[config] = runner
                sampler.label = None
                log(f"skip {config}: {runner}")
                continue
            runner(warm_x, warm_y, batch_size)  # Compiles, then warms up.
            sampler.label = None
            setup[config] = {
                "warmup_s": time.perf_counter() - start,
                "rss_growth_mb": (host_rss_bytes() - rss_before) / 2**20,
            }
            runners[config] = runner
            log(f"warmed up {config} in {setup[config]['warmup_s']:.1f} s")
        times = {config: [] for config in runners}
        for repeat in range(repeats):
            for config, runner in runners.items():
                sampler.label = config
                times[config].append(runner(x, y, batch_size))
                sampler.label = None
            log(f"repeat {repeat + 1}/{repeats} done")
        peaks = sampler.peaks

    images = batch_size * steps
    rates = {c: images / np.asarray(t) for c, t in times.items()}
    rates["fused_limit"] = 1 / (1 / rates["student"] + 1 / rates["teacher_forward"])
    order = ["student", "teacher_forward", "fused_limit"] + configs[2:]
    rows = []
    for config in order:
        if config in skipped:
            rows.append(
                {
                    "config": config,
                    "description": DESCRIPTIONS[config],
                    "skipped": skipped[config],
                }
            )
            continue
        rate = rates[config]
        row = {
            "config": config,
            "description": DESCRIPTIONS[config],
            "images_per_s": report_files.summary(rate),
            "per_repeat_images_per_s": [float(r) for r in rate],
            "vs_fused_limit": float(np.median(rate / rates["fused_limit"])),
        }
        reference = _keras_reference(config, rates)
        if reference is not None:
            row["vs_keras"] = float(np.median(rate / rates[reference]))
            row["keras_reference"] = reference
        if config in setup:
            peak = peaks.get(config, {})
            row.update(setup[config])
            row["peak_rss_mb"] = peak.get("rss", 0) / 2**20
            if peak.get("device") is not None:
                row["peak_device_mb"] = peak["device"] / 2**20
        rows.append(row)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": machine.machine_info(),
        "backend": keras.backend.backend(),
        "versions": report_files.versions(),
        "command": command,
        "settings": {
            "teacher": teacher,
            "student": student,
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "warmup_steps": warmup_steps,
            "dtype_policy": policy,
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "feature_layer": feature_layer,
            "seed": seed,
            "clock": clock,
        },
        "rows": rows,
        "targets": _targets(rates, runners),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    table = format_table(result)
    log(table)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        stem = os.path.join(
            output_dir,
            "throughput_{}_{}_{}".format(result["backend"], kind, result["date"][:10]),
        )
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(table + "\n")
        result["files"] = [stem + ".json", stem + ".md"]
    return result


def _keras_reference(config, rates):
    if config.startswith(("keras_", "student", "teacher", "fused")):
        return None
    reference = (
        "keras_logits_feature" if config == "kd_logits_feature" else "keras_logits"
    )
    return reference if reference in rates else None


def _targets(rates, runners):
    def ratio(a, b):
        if a not in rates or b not in rates:
            return None
        return float(np.median(rates[a] / rates[b]))

    targets = [
        ("kd_logits vs keras_logits", ratio("kd_logits", "keras_logits"), 1.0),
        (
            "kd_logits_feature vs keras_logits_feature",
            ratio("kd_logits_feature", "keras_logits_feature"),
            1.25,
        ),
    ]
    targets += [
        (f"{c} vs fused_limit", ratio(c, "fused_limit"), 0.9)
        for c in KD_CONFIGS
        if c in LIVE_TEACHER and c in runners
    ]
    return [
        {
            "name": name,
            "ratio": value,
            "target": goal,
            "met": None if value is None else value >= goal,
        }
        for name, value, goal in targets
    ]


def format_table(result):
    """The markdown table of a `run_benchmark` result."""
    s = result["settings"]
    lines = [
        f"Throughput, {result['backend']} on {result['machine']['device']} "
        f"({result['machine']['device_name']}), {s['teacher']} -> "
        f"{s['student']}, batch {s['batch_size']}, {s['steps']} steps x "
        f"{s['repeats']} repeats, {s['dtype_policy']}, "
        f"{s.get('clock', 'wall')} clock, {result['date']}",
        "",
        "| configuration | images/s (median) | spread % | vs fused | "
        "vs keras | peak RSS MB | peak device MB | warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(
                f"| {row['description']} | skipped: {row['skipped']} | | | | | | |"
            )
            continue
        ips = row["images_per_s"]
        vs_keras = row.get("vs_keras")
        lines.append(
            f"| {row['description']} | {ips['median']:.1f} | "
            f"{ips['spread_pct']:.0f} | {row['vs_fused_limit']:.2f} | "
            f"{fmt(vs_keras, '.2f')} | {fmt(row.get('peak_rss_mb'), '.0f')} | "
            f"{fmt(row.get('peak_device_mb'), '.0f')} | "
            f"{fmt(row.get('warmup_s'), '.1f')} |"
        )
    lines += ["", "| target | ratio | goal | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['name']} | {fmt(t['ratio'], '.2f')} | "
            f"≥ {t['target']:.2f} | {t['met']} |"
        )
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def main(argv):
    del argv
    command = " ".join(
        [f"KERAS_BACKEND={keras.backend.backend()}", "python"] + sys.argv
    )
    run_benchmark(
        teacher=FLAGS.teacher,
        student=FLAGS.student,
        batch_size=FLAGS.batch_size,
        steps=FLAGS.steps,
        repeats=FLAGS.repeats,
        warmup_steps=FLAGS.warmup_steps,
        mixed_precision=FLAGS.mixed_precision,
        input_shape=FLAGS.input_shape,
        num_classes=FLAGS.num_classes,
        configs=FLAGS.configs,
        feature_layer=FLAGS.feature_layer,
        seed=FLAGS.seed,
        output_dir=FLAGS.output_dir,
        command=command,
        clock=FLAGS.clock,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
