"""The throughput part of `benchmarks/gpu_suite.py`: its rows and targets.

`throughput_part(args, results, budget, log)` runs every row of
`args.rows` in every policy of `args.policies`, row by row in `ROWS`' order
(each row in every policy before the next row: the rows the targets need
come first, so a budget cut loses the least), and saves `results` after
each row. A row is built, warmed up (compilation), probed at `--steps` and
`2 x --steps` steps per call (its per-call overhead and step time), then
timed `--repeats` times at the steps per call that keep the overhead under
`--max_overhead` (`gpu_suite_budget.steps_for`, at most `--max_steps`) and
once more at twice that, which gives the overhead fraction it reports. A
row the budget cannot fit is skipped with the reason, a row that raises is
recorded as failed with its error, and the run goes on. `targets(rows)`
turns the rows into the suite's throughput targets (`TARGETS`).

No TensorFlow: imported by gpu_suite.py, which sets the JAX backend (and
`XLA_PYTHON_CLIENT_PREALLOCATE=false`) before Keras is imported.
"""

import gc
import tempfile

import gpu_suite_budget as gb
import keras
import memory_sampler
import numpy as np
import replay_rows
import report_files
import throughput_rows as tp

import keras_kd as kd

# Priority order: the rows of the targets first.
ROWS = (
    "student",
    "teacher_forward",
    "kd_logits",
    "torch_eager",
    "kd_logits_augment",
    "keras_logits_feature",
    "kd_logits_feature",
    "student_replay",
    "kd_recorded",
    "keras_logits",
    "kd_fa",
    "kd_at",
    "kd_afd",
    "kd_rtk",
    "kd_dlkd",
    "torch_compile",
)
DESCRIPTIONS = dict(
    tp.DESCRIPTIONS,
    kd_logits_augment=("kd: logits KD, on-device crop+flip"),
    torch_eager="PyTorch eager KD loop (cudnn.benchmark on CUDA)",
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
MEMORY_NOTE = (
    "JAX rows: peak_device_mb is the most bytes in use sampled every 10 ms "
    "while the row ran (build, warm-up and timing; it includes "
    "before_device_mb, what earlier rows and the teachers still hold); "
    "process_peak_device_mb is JAX's own peak counter, cumulative since the "
    "process began (it cannot be reset per row). PyTorch rows: "
    "torch.cuda.max_memory_allocated after reset_peak_memory_stats() before "
    "the row (PyTorch's allocator only)."
)
MODEL_ARGS = {"num_classes": 10, "input_shape": (32, 32, 3)}


class Data:
    """CIFAR-shaped random arrays of `steps` batches (a 16-batch block
    tiled: throughput does not depend on pixel values)."""

    def __init__(self, batch_size, steps, seed):
        block = min(steps, 16)
        x, y = tp.make_data(batch_size, block, (32, 32, 3), 10, seed)
        reps = -(-steps // block)
        self.x = np.tile(x, (reps, 1, 1, 1))
        self.y = np.tile(y, reps)
        self.batch_size = batch_size

    def take(self, steps):
        """`(x, y, batch_size)` of `steps` batches: one runner call."""
        n = steps * self.batch_size
        return self.x[:n], self.y[:n], self.batch_size


class PolicyModels:
    """One dtype policy's teacher, student factory, feature layer and
    (built on first use: it records the teacher) offline-teacher rows."""

    def __init__(self, args, policy):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(args.seed)
        self.args, self.policy = args, policy
        self.teacher = kd.models.get(args.teacher, **MODEL_ARGS)
        self.teacher.compile()
        self.feature_layer = tp.same_shape_layer(self.teacher, self.make_student())
        self.replay = None
        self.record_reported = False

    def make_student(self):
        return kd.models.get(self.args.student, **MODEL_ARGS)

    def replay_rows(self):
        if self.replay is None:
            a = self.args
            self.replay = replay_rows.ReplayRows(
                self.teacher,
                self.make_student,
                a.batch_size,
                2 * a.max_steps,
                a.workers,
                tempfile.mkdtemp(),
                a.seed,
            )
        return self.replay


def _cuda_torch():
    """torch, when it is installed and sees a CUDA device; else None."""
    if not tp.torch_installed():
        return None
    import torch

    return torch if torch.cuda.is_available() else None


def _torch_row(config, models, policy):
    runner = tp.build_torch_runner(models.teacher, models.make_student())
    if isinstance(runner, str):
        return runner
    torch = runner.torch
    if runner.cuda:  # Tunes convolutions, as XLA does for JAX.
        torch.backends.cudnn.benchmark = True
    if policy == "mixed_bfloat16":  # bf16 autocast needs no loss scaling.
        runner.autocast_dtype = torch.bfloat16
        runner.scaler = torch.amp.GradScaler("cuda", enabled=False)
    if config == "torch_compile":
        runner.student = torch.compile(runner.student)
        runner.teacher = torch.compile(runner.teacher)
    return runner


def build_row(config, models, policy):
    """A callable timing one pass over `(x, y)`, or a skip reason (str)."""
    if config in replay_rows.ROWS:
        return models.replay_rows().runner(config)
    if config.startswith("torch_"):
        return _torch_row(config, models, policy)
    teacher, make_student = models.teacher, models.make_student
    if config == "kd_logits_augment":
        student = make_student()
        model = kd.Distiller(
            teacher,
            student,
            augmentation=kd.data.RandomCropFlip(seed=0),
            **tp._kd_terms("kd_logits", teacher, student, models.feature_layer),
        )
        model.compile(optimizer=tp._optimizer(), loss=tp._ce())
        return tp.KerasRunner(model)
    return tp.build_runner(
        config, teacher, make_student, models.feature_layer, MODEL_ARGS["num_classes"]
    )


def row_kind(config):
    """The `gpu_suite_budget.Estimates` kind of a row."""
    if config.startswith("torch_"):
        return config
    if config in ("student", "student_replay", "teacher_forward"):
        return config.split("_")[0]
    return "kd"


def _memory_before(torch_row):
    if torch_row:
        torch = _cuda_torch()
        if torch is None:
            return None
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return memory_sampler.device_memory_bytes()


def _memory_after(torch_row, before, sampled):
    mb = lambda b: None if b is None else b / 2**20  # noqa: E731
    if torch_row:
        torch = _cuda_torch()
        peak = None if torch is None else torch.cuda.max_memory_allocated()
        return {"before_device_mb": mb(before), "peak_device_mb": mb(peak)}
    return {
        "before_device_mb": mb(before),
        "peak_device_mb": mb(sampled),
        "process_peak_device_mb": mb(memory_sampler.device_peak_bytes()),
    }


def time_row(runner, row, args, data, budget):
    """Probes `runner` at two lengths, sizes its calls, times them and
    checks the overhead at `n` and `2n` steps; fills `row`."""
    n0 = args.steps
    t_a, t_b = runner(*data.take(n0)), runner(*data.take(2 * n0))
    c0, s0 = gb.call_overhead(n0, t_a, t_b)
    n = gb.steps_for(c0, s0, args.max_overhead, n0, args.max_steps)
    row["probe"] = {"steps": [n0, 2 * n0], "call_s": [t_a, t_b]}
    need = (args.repeats + 2) * t_b * n / (2 * n0)  # t(2n0) per 2n0 steps.
    reason = budget.check(need)
    if reason:
        row["skipped"] = f"timed phase: {reason}"
        return
    times = np.asarray([runner(*data.take(n)) for _ in range(args.repeats)])
    t_2n = runner(*data.take(2 * n))
    t_n = float(np.median(times))
    overhead, step = gb.call_overhead(n, t_n, t_2n)
    rates = args.batch_size * n / times
    row["images_per_s"] = report_files.summary(rates)
    row["per_repeat_images_per_s"] = [float(r) for r in rates]
    row["steps_per_call"] = n
    row["overhead"] = {
        "steps": [n, 2 * n],
        "call_s": [t_n, t_2n],
        "per_call_s": overhead,
        "step_s": step,
        "fraction": overhead / t_n if t_n > 0 else None,
        "below_limit": bool(t_n > 0 and overhead / t_n < args.max_overhead),
    }


def measure_row(config, policy, get_models, args, data, budget, sampler):
    """One row: `{"policy", "config", "description", ...}` with its
    images/s and memory, or `skipped` (budget, unavailable) or `failed`."""
    row = {"policy": policy, "config": config, "description": DESCRIPTIONS[config]}
    torch_row = config.startswith("torch_")
    start = tp.now()
    before = _memory_before(torch_row)
    sampler.label = None if torch_row else (policy, config)
    try:
        models = get_models(policy)
        keras.mixed_precision.set_global_policy(policy)
        runner = build_row(config, models, policy)
        if isinstance(runner, str):
            row["skipped"] = runner
            return row
        runner(*data.take(args.warmup_steps))
        row["warmup_s"] = tp.now() - start
        time_row(runner, row, args, data, budget)
    except Exception as e:  # A row must not sink the suite.
        row["failed"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        sampler.label = None
        sampled = sampler.peaks.pop((policy, config), {}).get("device")
        row.update(_memory_after(torch_row, before, sampled))
        row["row_s"] = tp.now() - start
    if torch_row and "skipped" not in row:
        row["cudnn_benchmark"] = _cuda_torch() is not None
    return row


def plan(args):
    """`(config, policy)` in running order."""
    return [
        (config, policy)
        for config in ROWS
        if config in args.rows
        for policy in args.policies
        if policy == "float32" or not args.smoke or config in SMOKE_BF16_ROWS
    ]


def derived_rows(rows, models):
    """The fused limit of a policy once its student and teacher rows are
    in, and its recording's row once it has recorded (each once)."""
    out = []
    policies = dict.fromkeys(r["policy"] for r in rows)
    for policy in policies:
        done = {r["config"]: r for r in rows if r["policy"] == policy}
        pair = [done.get(c, {}) for c in ("student", "teacher_forward")]
        if "fused_limit" not in done and all(
            "per_repeat_images_per_s" in r for r in pair
        ):
            s, t = (np.asarray(r["per_repeat_images_per_s"]) for r in pair)
            k = min(len(s), len(t))
            fused = 1 / (1 / s[:k] + 1 / t[:k])
            out.append(
                {
                    "policy": policy,
                    "config": "fused_limit",
                    "description": DESCRIPTIONS["fused_limit"],
                    "images_per_s": report_files.summary(fused),
                    "per_repeat_images_per_s": [float(v) for v in fused],
                }
            )
        state = models.get(policy)
        if state is not None and state.replay and not state.record_reported:
            state.record_reported = True
            out.append(_record_row(policy, state.replay.record_row))
    return out


def _record_row(policy, record):
    return {
        "policy": policy,
        "config": "record",
        "description": "{} ({:.0f} bytes/example/epoch)".format(
            replay_rows.DESCRIPTIONS["record"], record["bytes_per_example_epoch"]
        ),
        "images_per_s": report_files.summary([record["images_per_s"]]),
        "bytes_per_example_epoch": record["bytes_per_example_epoch"],
    }


def _estimate(estimates, config):
    """The row's estimate; torch.compile's first is at least 3x the
    first-row prior (Inductor can compile for minutes)."""
    estimate = estimates.estimate(row_kind(config), config)
    if config == "torch_compile" and (config, config) not in estimates.seconds:
        estimate = max(estimate or 0.0, 3 * estimates.first_s)
    return estimate


def throughput_part(args, results, budget, log):
    """Every planned row, each saved to `results` as soon as it is done."""
    data = Data(args.batch_size, 2 * args.max_steps, args.seed)
    estimates = gb.Estimates(args.first_row_s)
    models = {}

    def get_models(policy):
        if policy not in models:
            models[policy] = PolicyModels(args, policy)
        return models[policy]

    rows = results.result.setdefault("throughput", [])
    with memory_sampler.MemorySampler() as sampler:
        for config, policy in plan(args):
            what = f"throughput {policy} {config}"
            reason = budget.check(_estimate(estimates, config), what)
            if reason:
                row = {"policy": policy, "config": config}
                row.update(description=DESCRIPTIONS[config], skipped=reason)
            else:
                row = measure_row(
                    config, policy, get_models, args, data, budget, sampler
                )
                if "images_per_s" in row:
                    estimates.add(row_kind(config), config, row["row_s"])
                elif row.get("skipped", "").startswith("timed phase"):
                    budget.record(what, row["skipped"])
            rows.append(row)
            log(results.row_line(row))
            for extra in derived_rows(rows, models):
                rows.append(extra)
                log(results.row_line(extra))
            results.save()
            gc.collect()
    models.clear()
    gc.collect()
    keras.mixed_precision.set_global_policy("float32")


def targets(rows):
    """The throughput targets: ratios of the rows' median images/s."""
    rates, policies = {}, []
    for row in rows:
        if row["policy"] not in policies:
            policies.append(row["policy"])
        if "images_per_s" in row:
            rates[(row["policy"], row["config"])] = row["images_per_s"]["median"]
    results = []
    for name, a, b, goal, only in TARGETS:
        for policy in policies:
            if only not in (None, policy):
                continue
            value = None
            if (policy, a) in rates and (policy, b) in rates:
                value = rates[(policy, a)] / rates[(policy, b)]
            results.append(
                {
                    "name": f"{name} ({policy})",
                    "ratio": value,
                    "goal": goal,
                    "met": None if value is None else value >= goal,
                }
            )
    return results
