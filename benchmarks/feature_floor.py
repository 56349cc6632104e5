"""How much of a teacher's feature map a student's map can explain.

For a teacher and trained students (`.keras` files) on one split, prints the
teacher map's variance about its channel means and, per student, the
residual mean squared error of the best 1x1 linear map (least squares, with
a bias) from the student's map, resized to the teacher's size, onto the
teacher's: the floor a linear aligner reaches on those features. A
feature-matching term (FA, FitNets, SKD) whose training value stays near
that floor cannot fall further, and its weight then only scales the noise
of its gradients.

Example (the converged Fashion-MNIST suite, seed 0):

```
W=/work/fashion_work/suite/fashion_mnist_converged_60000
python benchmarks/feature_floor.py --teacher=$W/kd_s0/teacher_0.keras \
    --students=$W/kd_s0/student.keras,$W/fa_x1_s0/student.keras \
    --split=/work/fashion_work/suite/fashion_mnist_60000_val5000/test.npz \
    --normalize_like=$W/kd_s0
```
"""

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("teacher", None, "Teacher .keras file.")
    flags.DEFINE_list("students", [], "Student .keras files.")
    flags.DEFINE_string("split", None, "An .npz with the images as `x`.")
    flags.DEFINE_string(
        "normalize_like", None, "A finished run's folder: its mean and std."
    )
    flags.DEFINE_string("layer", None, "Layer of both models (default: last stage).")


def feature_map(model, x, layer=None):
    """The output of `layer` (default: the model's last stage) on `x`."""
    import keras

    from keras_kd import models

    name = layer or models.stage_layer_names(model)[-1]
    tap = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(tap.predict(x, batch_size=500, verbose=0))


def linear_floor(student_map, teacher_map):
    """`(teacher variance, residual MSE)`: the teacher map's variance about
    its channel means, and the mean squared residual of the least-squares
    1x1 map (with bias) from `student_map` (resized bilinearly to the
    teacher's height and width) onto `teacher_map`."""
    import keras

    if student_map.shape[1:3] != teacher_map.shape[1:3]:
        resized = keras.ops.image.resize(student_map, teacher_map.shape[1:3])
        student_map = np.asarray(keras.ops.convert_to_numpy(resized))
    a = student_map.reshape(-1, student_map.shape[-1]).astype("float64")
    a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    b = teacher_map.reshape(-1, teacher_map.shape[-1]).astype("float64")
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    variance = float(np.mean((b - b.mean(axis=0)) ** 2))
    return variance, float(np.mean((a @ coef - b) ** 2))


def main(argv):
    del argv
    import keras
    from accuracy_runs import normalize_like_run

    x = np.load(FLAGS.split)["x"]
    x = x[..., None] if x.ndim == 3 else x
    if FLAGS.normalize_like:
        x = normalize_like_run(x, FLAGS.normalize_like)
    x = x.astype("float32")
    teacher = keras.models.load_model(FLAGS.teacher, compile=False)
    teacher_map = feature_map(teacher, x, FLAGS.layer)
    print(f"teacher {FLAGS.teacher}: map {teacher_map.shape[1:]}")
    for path in FLAGS.students:
        student = keras.models.load_model(path, compile=False)
        student_map = feature_map(student, x, FLAGS.layer)
        variance, residual = linear_floor(student_map, teacher_map)
        print(
            f"{path}: map {student_map.shape[1:]}, teacher variance "
            f"{variance:.4f}, linear-aligner residual {residual:.4f} "
            f"({100 * (1 - residual / variance):.1f} % explained)"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
