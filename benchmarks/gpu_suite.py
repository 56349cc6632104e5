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
checks the targets (`gpu_suite_throughput.TARGETS`,
`gpu_suite_accuracy.ACCURACY_TARGET`). `--smoke` runs tiny settings (small
models, synthetic JPEGs, a few steps) on CPU so the script is known to
work before it meets a GPU. benchmarks/README.md has the GPU command.

This file is the command line and the report; the parts are in
`gpu_suite_throughput.py` and `gpu_suite_accuracy.py`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# JAX would otherwise take 75% of the GPU up front: per-row memory would
# mean nothing and the PyTorch rows could not allocate.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_files  # noqa: E402
from gpu_suite_accuracy import accuracy_part  # noqa: E402
from gpu_suite_accuracy import accuracy_targets  # noqa: E402
from gpu_suite_throughput import ROWS  # noqa: E402
from gpu_suite_throughput import targets  # noqa: E402
from gpu_suite_throughput import throughput_policy  # noqa: E402

from keras_kd import machine  # noqa: E402

# Smoke: the smallest zoo ResNet as both models (the rows it also runs in
# mixed_bfloat16: gpu_suite_throughput.SMOKE_BF16_ROWS).
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
        result["targets"] += accuracy_targets(result["accuracy"]["runs"])
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
