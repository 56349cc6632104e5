"""How much of each distilled run's training loss is the distillation.

Reads the `distilled/log.csv` of finished recipe runs and gives, at the
first and the last epoch, the student's cross-entropy, the weighted sum of
the knowledge terms (`distillation_loss`), their ratio, and every term's
metric as logged (a term's own value; a composite term's parts, e.g.
DLKD's, as weighted inside it). A ratio far above 1 says the terms, not the labels,
drive the student: the first thing to check when a method trails KD.

Example (the converged Fashion-MNIST suite's seed-0 runs):

```
python benchmarks/loss_balance.py \
    --runs=/work/fashion_work/suite/fashion_mnist_converged_60000/*_s0
```
"""

import csv
import glob
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
# Columns of a recipe's log.csv that are not a knowledge term.
NOT_TERMS = {
    "epoch",
    "accuracy",
    "loss",
    "total_loss",
    "student_loss",
    "distillation_loss",
    "learning_rate",
}


def define_flags():
    flags.DEFINE_list("runs", [], "Run folders (globs allowed).")


def balance(log_path):
    """`{"first": row, "last": row}` of a log.csv, each row with the
    epoch, `ce`, `distillation`, `ratio` (distillation / ce) and `terms`
    (each term's training metric as logged); None without a
    distillation_loss column (a run alone)."""
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "distillation_loss" not in rows[0]:
        return None

    def summary(row):
        ce, distillation = float(row["student_loss"]), float(row["distillation_loss"])
        terms = {
            name: float(value)
            for name, value in row.items()
            if name not in NOT_TERMS and not name.startswith("val_")
        }
        return {
            "epoch": int(row["epoch"]),
            "ce": ce,
            "distillation": distillation,
            "ratio": distillation / ce,
            "terms": terms,
        }

    return {"first": summary(rows[0]), "last": summary(rows[-1])}


def format_markdown(balances):
    """A table, one row per run: `{run name: balance(...)}`."""
    lines = [
        "| run | CE first | terms first | ratio first | CE last | terms last "
        "| ratio last | term metrics, last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, b in balances.items():
        first, last = b["first"], b["last"]
        terms = ", ".join(f"{k} {v:.3g}" for k, v in sorted(last["terms"].items()))
        lines.append(
            f"| {name} | {first['ce']:.3f} | {first['distillation']:.3f} "
            f"| {first['ratio']:.1f} | {last['ce']:.3f} "
            f"| {last['distillation']:.3f} | {last['ratio']:.1f} | {terms} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    balances = {}
    for pattern in FLAGS.runs:
        for folder in sorted(glob.glob(pattern)):
            path = os.path.join(folder, "distilled", "log.csv")
            if os.path.exists(path) and (b := balance(path)):
                balances[os.path.basename(folder.rstrip("/"))] = b
    print(format_markdown(balances))


if __name__ == "__main__":
    define_flags()
    app.run(main)
