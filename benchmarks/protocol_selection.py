"""The validation runs behind a protocol's lengths: each candidate model
and epoch count trained alone on the training split less a stratified
validation split, with the validation split as its test, and the curves.

Writes `protocol_selection_<protocol>_<date>.json` / `.md` to
`--output_dir`: per run, the command, the validation accuracy of every
epoch, the last and best epochs, wall time and the 1-minute load average
before and after (times taken above 1.5 on two cores are not quotable;
null for a finished run read back, not retrained).

Example (the `fashion` protocol's teacher and student lengths):

```
python benchmarks/protocol_selection.py --protocol=fashion \
    --source=../shared/data/fashion_mnist \
    --runs=fashion_cnn_large:30,fashion_cnn_small:20,fashion_cnn_small:30
```
"""

import csv
import datetime
import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from accuracy_data import fashion_subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("protocol", "fashion", "The recipes' --protocol.")
    flags.DEFINE_string("source", None, "Folder with train.npz and test.npz.")
    flags.DEFINE_integer("val", 5000, "Validation images (class-stratified).")
    flags.DEFINE_list("runs", [], "MODEL:EPOCHS candidates, each trained alone.")
    flags.DEFINE_integer("seed", 0, "Seed of every run.")
    flags.DEFINE_string("work_dir", "/tmp/keras_kd_selection", "Run folders.")
    flags.DEFINE_string(
        "output_dir", os.path.join(ROOT, "benchmarks", "results"), "Reports."
    )


def run_candidate(model, epochs, val_folder):
    """Trains (or reads back) one candidate; returns its record."""
    out = os.path.join(FLAGS.work_dir, f"{model}_e{epochs}_s{FLAGS.seed}")
    command = [
        "python",
        "recipes/train_teacher.py",
        f"--dataset=npz:{val_folder}",
        f"--protocol={FLAGS.protocol}",
        f"--model={model}",
        f"--epochs={epochs}",
        "--export=",
        f"--seed={FLAGS.seed}",
        f"--output_dir={out}",
    ]
    load = None  # Unknown for a run read back.
    if not os.path.exists(os.path.join(out, "results.json")):
        load = [os.getloadavg()[0]]
        subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True)
        load.append(os.getloadavg()[0])
    with open(os.path.join(out, "results.json")) as f:
        entry = json.load(f)["models"]["model"]
    with open(os.path.join(out, "model", "log.csv")) as f:
        curve = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    return {
        "model": model,
        "epochs": epochs,
        "command": " ".join(command),
        "validation_accuracy": curve,
        "last": curve[-1],
        "best": max(curve),
        "best_epoch": curve.index(max(curve)) + 1,
        "wall_seconds": entry["wall_seconds"],
        "load_average": load,
    }


def main(argv):
    del argv
    _, val_folder = fashion_subset(FLAGS.source, FLAGS.work_dir, 60000, FLAGS.val)
    runs = []
    for spec in FLAGS.runs:
        model, epochs = spec.split(":")
        runs.append(run_candidate(model, int(epochs), val_folder))
    stem = os.path.join(
        FLAGS.output_dir,
        f"protocol_selection_{FLAGS.protocol}_{datetime.date.today()}",
    )
    with open(stem + ".json", "w") as f:
        json.dump({"protocol": FLAGS.protocol, "val": FLAGS.val, "runs": runs}, f)
    lines = [
        f"# `{FLAGS.protocol}` protocol: validation runs ({FLAGS.val} images)",
        "",
        "| model | epochs | last | best (epoch) | last 5 epochs | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        tail = " ".join(f"{100 * a:.2f}" for a in r["validation_accuracy"][-5:])
        lines.append(
            f"| {r['model']} | {r['epochs']} | {100 * r['last']:.2f} | "
            f"{100 * r['best']:.2f} ({r['best_epoch']}) | {tail} | "
            f"`{r['command']}` |"
        )
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
