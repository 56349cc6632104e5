"""The GPU figure of keras_kd: throughput and CIFAR-10 accuracy, in parts.

JAX backend, no TensorFlow needed (data through `kd.data.EpochBatches`,
JPEGs decoded with Pillow where TensorFlow is absent). `--part` chooses:

1. `throughput` (`gpu_suite_throughput.py`), batch 256, resnet32x4 ->
   resnet8x4, float32 and mixed_bfloat16: images/s (median and spread over
   `--repeats` calls sized so that per-call overhead stays under
   `--max_overhead`, checked at two lengths) and device memory per row of
   the student alone, the teacher's forward pass, the fused limit
   `1/(1/student + 1/teacher)`, kd logits KD, the PyTorch eager loop,
   kd logits with on-device crop+flip, keras.distillation and kd
   logits+feature KD, the offline teacher (`replay_rows`), keras
   logits KD, FA, AT, AFD, RTK, DLKD and the `torch.compile` loop (in
   that order, each in every policy before the next: the targets' rows
   first).
2. `accuracy` (`gpu_suite_accuracy.py`) on CIFAR-10 (the JPEG copy,
   `--data_dir`): a resnet32x4 teacher, then resnet8x4 students for
   `--student_epochs` (60) epochs: kd KD, alone, keras.distillation KD and
   kd KD+FA; one seed, the same batch order and host crop+flip for every
   run; test accuracy and wall time per run.
3. `all`: both, in one call.

First a preflight prints the versions (Python, JAX, Keras, PyTorch) and
devices and runs one jitted training step of the student, so a broken
install fails in seconds (exit status 3; 1 if Keras cannot be imported).
`--budget_s` bounds the call: no row or run starts that the suite, from
what it has measured so far, estimates cannot end inside it; what it skips
is listed with the reason. A row or run that raises is recorded with its
error and the call goes on. The JSON and markdown,
`gpu_suite_<device>_<date>_<time>_<part>.{json,md}` in `--output_dir`, are
rewritten after every row and run (the PNG at the end), and each row and
run prints a line, so a call cut at any point returns what it measured.
`--smoke` runs tiny settings (small models, synthetic JPEGs, a few steps)
on CPU. benchmarks/README.md has the GPU calls.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX would otherwise take 75% of the GPU up front: per-row memory would
# mean nothing and the PyTorch rows could not allocate.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

try:
    import keras
except Exception as error:  # The GPU image has no Keras of its own.
    sys.exit(
        f"gpu_suite: `import keras` failed on Python "
        f"{platform.python_version()}: {type(error).__name__}: {error}. On the "
        "GPU machine, install the carried wheels first (benchmarks/README.md)."
    )

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_suite_accuracy as accuracy  # noqa: E402
import gpu_suite_budget as gb  # noqa: E402
import gpu_suite_report as report  # noqa: E402
import gpu_suite_throughput as throughput  # noqa: E402
import report_files  # noqa: E402
import throughput_rows as tp  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import machine  # noqa: E402

# Smoke: the smallest zoo ResNet as both models (the rows it also runs in
# mixed_bfloat16: gpu_suite_throughput.SMOKE_BF16_ROWS).
SMOKE = {
    "teacher": "resnet8x4",
    "student": "resnet8x4",
    "batch_size": 32,
    "steps": 1,
    "max_steps": 2,
    "repeats": 2,
    "warmup_steps": 1,
    "teacher_epochs": 1,
    "student_epochs": 1,
    "train_limit": 256,
    "test_limit": 128,
    "steps_per_execution": 1,
    "lr": 0.01,
    "first_row_s": 20.0,
}
SETTINGS = (
    "smoke",
    "part",
    "teacher",
    "student",
    "batch_size",
    "steps",
    "max_steps",
    "max_overhead",
    "repeats",
    "warmup_steps",
    "policies",
    "rows",
    "runs",
    "budget_s",
    "first_row_s",
    "teacher_epochs",
    "student_epochs",
    "lr",
    "seed",
    "train_limit",
    "test_limit",
)


def _names(p, flag, value, known):
    names = [n for n in value.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        p.error(f"--{flag}: unknown {unknown}; known: {','.join(known)}")
    return names


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--smoke", action="store_true", help="Tiny settings (a CPU check).")
    add("--part", choices=("throughput", "accuracy", "all"), default="all")
    add("--budget_s", type=float, default=0, help="Seconds for the call; 0: none.")
    add(
        "--first_row_s",
        type=float,
        default=60.0,
        help="Budget: assumed seconds of a first row or run, before any "
        "measurement (later ones are estimated from those measured).",
    )
    add("--rows", default=",".join(throughput.ROWS), help="Throughput rows.")
    add("--policies", default="float32,mixed_bfloat16")
    add("--teacher", default="resnet32x4")
    add("--student", default="resnet8x4")
    add("--batch_size", type=int, default=256)
    add("--steps", type=int, default=20, help="Probe: steps per call (and 2x).")
    add("--max_steps", type=int, default=400, help="Most steps per timed call.")
    add("--max_overhead", type=float, default=0.02, help="Per-call share.")
    add("--repeats", type=int, default=3, help="Timed calls per row.")
    add("--warmup_steps", type=int, default=3)
    add(
        "--data_dir",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ".data",
            "cifar10_jpeg",
        ),
        help="npz folder (JPEG format) of CIFAR-10 (git-ignored .data/).",
    )
    add("--runs", default=",".join(accuracy.RUNS), help="Student runs, in order.")
    add("--teacher_weights", default="", help="Load the teacher, or save it.")
    add("--teacher_epochs", type=int, default=30)
    add("--student_epochs", type=int, default=60)
    add("--lr", type=float, default=0.1, help="SGD peak LR (warm-up, cosine).")
    add("--accuracy_policy", default="mixed_bfloat16")
    add(
        "--steps_per_execution",
        type=int,
        default=8,
        help="Accuracy runs: training steps per compiled call "
        "(JAX unrolls them: compile time grows with it).",
    )
    add("--train_limit", type=int, default=0)
    add("--test_limit", type=int, default=0)
    add("--workers", type=int, default=8, help="Threads preparing batches.")
    add("--seed", type=int, default=0)
    add("--output_dir", default="benchmarks/results")
    return p


def parse_args(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.parts = ["throughput", "accuracy"] if args.part == "all" else [args.part]
    rows = _names(p, "rows", args.rows, throughput.ROWS)
    args.rows = [r for r in throughput.ROWS if r in rows]
    args.runs = _names(p, "runs", args.runs, accuracy.RUNS)
    args.policies = args.policies.split(",")
    return args


def versions():
    """Python, NumPy, Keras, keras_kd, and JAX, jaxlib and PyTorch where
    installed (from their metadata: PyTorch is not imported for it)."""
    found = report_files.versions()
    for name in ("jax", "jaxlib", "torch"):
        try:
            found.setdefault(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def devices(args):
    """The backend's devices, and PyTorch's CUDA device when torch rows
    will run (importing PyTorch costs seconds)."""
    found = [f"{keras.backend.backend()}: {machine.device_description()}"]
    if keras.backend.backend() == "jax":
        import jax

        found = [f"jax {d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
        client = getattr(jax.devices()[0], "client", None)
        found[0] += f" ({getattr(client, 'platform_version', '?')})"
    torch_rows = any(r.startswith("torch_") for r in args.rows)
    if "throughput" in args.parts and torch_rows and tp.torch_installed():
        import torch

        cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
        found.append(f"torch: {name} (CUDA {torch.version.cuda})")
    return found


def preflight(args, log):
    """Versions and devices, then one jitted training step of the student
    (batch 8): a broken install fails here, in seconds."""
    info = {"versions": versions(), "devices": devices(args)}
    log("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    log("devices: " + "; ".join(info["devices"]))
    start = tp.now()
    keras.utils.set_random_seed(args.seed)
    student = kd.models.get(args.student, num_classes=10, input_shape=(32, 32, 3))
    student.compile(optimizer=keras.optimizers.SGD(0.01), loss=tp._ce())
    x, y = tp.make_data(8, 1, (32, 32, 3), 10, args.seed)
    loss = float(student.train_on_batch(x, y, return_dict=True)["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(f"one training step gave a loss of {loss}")
    info["one_step_s"] = tp.now() - start
    log(f"preflight: one jitted step of {args.student} in {info['one_step_s']:.1f} s")
    return info


def _new_result(args, argv):
    date = datetime.datetime.now(datetime.timezone.utc)
    command = " ".join(["python"] + sys.argv) if argv is None else None
    return {
        "date": date.isoformat(timespec="seconds"),
        "part": args.part,
        "machine": machine.machine_info(),
        "backend": keras.backend.backend(),
        "versions": versions(),
        "command": command or f"gpu_suite.main({argv!r})",
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "parts_s": {},
        "memory_note": throughput.MEMORY_NOTE,
        "errors": [],
    }


def output_stem(args, result):
    """`<output_dir>/gpu_suite_<device>_<date>_<HHMMSS>_<part>[_smoke]`."""
    stamp = result["date"][:10] + "_" + result["date"][11:19].replace(":", "")
    name = f"gpu_suite_{machine.device_kind()}_{stamp}_{args.part}"
    return os.path.join(args.output_dir, name + ("_smoke" if args.smoke else ""))


def _refresher(budget, start):
    def refresh(result):
        result["targets"] = []
        if result.get("throughput"):
            result["targets"] += throughput.targets(result["throughput"])
        if result.get("accuracy"):
            runs = result["accuracy"]["runs"]
            result["targets"] += accuracy.accuracy_targets(runs)
        result["budget"] = budget.summary()
        result["wall_s"] = tp.now() - start
        result["versions"] = versions()

    return refresh


def _timed_part(name, run, result, log):
    """Runs one part; an error outside its rows is recorded, not raised."""
    start = tp.now()
    try:
        run()
    except Exception as e:
        result["errors"].append(f"{name}: {type(e).__name__}: {e}"[:1000])
        log(f"[{name}] FAILED: {result['errors'][-1]}")
    result["parts_s"][name] = tp.now() - start


def main(argv=None, log=print):
    """Runs the parts; returns the result. SystemExit(3) when the
    preflight fails (its files are written first)."""
    args = parse_args(argv)
    start = tp.now()
    budget = gb.Budget(args.budget_s, args.first_row_s)
    result = _new_result(args, argv)
    results = report.Results(
        result, output_stem(args, result), _refresher(budget, start), log
    )

    def check():
        result["preflight"] = preflight(args, log)

    _timed_part("preflight", check, result, log)
    if "preflight" not in result:
        result["preflight"] = {"failed": result["errors"][-1]}
        results.save()
        log(
            "gpu_suite: the preflight failed (versions, devices or one jitted "
            "training step, error above): no part was run; wrote "
            + ", ".join(results.files)
        )
        raise SystemExit(3)
    if "throughput" in args.parts:
        run = lambda: throughput.throughput_part(args, results, budget, log)  # noqa
        _timed_part("throughput", run, result, log)
    if "accuracy" in args.parts:
        run = lambda: accuracy.accuracy_part(args, results, budget, log)  # noqa
        _timed_part("accuracy", run, result, log)
    results.save(final=True)
    log(report.format_markdown(result))
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result["parts_s"].items())
    log(f"part times: {times}; wall {result['wall_s']:.1f} s")
    log(f"wrote {', '.join(results.files)}")
    return result


if __name__ == "__main__":
    main()
