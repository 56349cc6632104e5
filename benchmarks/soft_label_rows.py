"""Which classes a ReffAKD soft-label table teaches wrong, and what it costs.

For finished ReffAKD runs (folders with `soft_labels.npy`, the recipe's
table), prints per class the table's label margin (log P[y, y] minus the
largest other log P[y, j], which is the similarity margin the diagonal
bonus adds to; ≤ 0: the table ranks another class at least as high) and
its rival, then each student's test accuracy on that class: the ReffAKD
runs' own and any others (`.keras` files, or `.weights.h5` files of a
`--model` from `keras_kd.models`, such as a kd run's `student_alone`).

Example (the converged Fashion-MNIST suite, seed 0):

```
W=/work/fashion_work/suite/fashion_mnist_converged_60000
python benchmarks/soft_label_rows.py --runs=$W/reffakd_T5_a0.9_s0 \
    --students=alone=$W/kd_s0/student_alone/weights.weights.h5 \
    --students=kd=$W/kd_s0/student.keras --model=fashion_cnn_small \
    --split=/work/fashion_work/suite/fashion_mnist_60000/test.npz \
    --normalize_like=$W/kd_s0
```
"""

import os
import sys

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_runs import normalize_like_run  # noqa: E402

from keras_kd.reffakd import label_margins  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("runs", [], "ReffAKD run folders (soft_labels.npy).")
    flags.DEFINE_multi_string("students", [], "A student as name=path (.keras, .h5).")
    flags.DEFINE_string("model", None, "keras_kd.models name for .weights.h5.")
    flags.DEFINE_string("split", None, "An .npz with the images `x`, labels `y`.")
    flags.DEFINE_string(
        "normalize_like", None, "A finished run's folder: its mean and std."
    )


def per_class_accuracy(logits, y, num_classes):
    predicted = np.argmax(logits, axis=-1)
    return np.array([np.mean(predicted[y == c] == c) for c in range(num_classes)])


def load_student(path, model_name, num_classes, input_shape):
    """A `.keras` file, or `model_name` built with a `.weights.h5` file."""
    import keras

    import keras_kd as kd

    if path.endswith(".keras"):
        return keras.models.load_model(path, compile=False)
    model = kd.models.get(model_name, num_classes, input_shape)
    model.load_weights(path)
    return model


def report(runs, students, split, normalize_like, model=None):
    """The markdown table: `runs` are ReffAKD run folders, `students`
    `[(name, path), ...]` more students, `split` an .npz file."""
    data = np.load(split)
    x = normalize_like_run(data["x"], normalize_like)
    y = data["y"].reshape(-1)
    tables = [np.load(os.path.join(run, "soft_labels.npy")) for run in runs]
    students = [
        (os.path.basename(run), os.path.join(run, "student.keras")) for run in runs
    ] + list(students)
    num_classes = len(tables[0])
    accuracy = {}
    for name, path in students:
        student = load_student(path, model, num_classes, x.shape[1:])
        logits = student.predict(x, batch_size=500, verbose=0)
        accuracy[name] = per_class_accuracy(logits, y, num_classes)
    header = ["class"]
    for run in runs:
        header += [f"margin, {os.path.basename(run)}", "rival"]
    header += [f"test %, {name}" for name, _ in students]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    columns = [label_margins(np.log(table.astype("float64"))) for table in tables]
    for c in range(num_classes):
        cells = [str(c)]
        for margins, rivals in columns:
            cells += [f"{margins[c]:+.4f}", str(rivals[c])]
        cells += [f"{100 * accuracy[name][c]:.1f}" for name, _ in students]
        lines.append("| " + " | ".join(cells) + " |")
    overall = [f"{100 * accuracy[name].mean():.2f}" for name, _ in students]
    lines.append("| " + " | ".join(["mean"] + [""] * 2 * len(tables) + overall) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    students = [tuple(item.split("=", 1)) for item in FLAGS.students]
    print(report(FLAGS.runs, students, FLAGS.split, FLAGS.normalize_like, FLAGS.model))


if __name__ == "__main__":
    define_flags()
    app.run(main)
