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
`memory_stats`, TensorFlow `get_memory_info`) on accelerators. The rows
are built in `throughput_rows.py`; this file times and reports them.

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
from memory_sampler import MemorySampler  # noqa: E402
from memory_sampler import host_rss_bytes  # noqa: E402
from throughput_rows import ALL_CONFIGS  # noqa: E402
from throughput_rows import CLOCKS  # noqa: E402
from throughput_rows import DESCRIPTIONS  # noqa: E402
from throughput_rows import KD_CONFIGS  # noqa: E402
from throughput_rows import LIVE_TEACHER  # noqa: E402
from throughput_rows import build_runner  # noqa: E402
from throughput_rows import make_data  # noqa: E402
from throughput_rows import same_shape_layer  # noqa: E402
from throughput_rows import use_clock  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import machine  # noqa: E402

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
    use_clock(clock)
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
