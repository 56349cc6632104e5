import keras
from keras import layers
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import per_sample_mean


def make_aligner(student_shape, teacher_shape, kind="nonlinear", name=None):
    """A trainable map from a student feature to a teacher feature's shape.

    Maps (NHWC): `Conv1×1(C_s→C_t) → BN → ReLU → Conv1×1(C_t→C_t)`
    (`"nonlinear"`) or `Conv1×1 → BN` (`"linear"`, FitNets), after resizing
    the student map to the teacher's H×W (average pooling for an integer
    factor, bilinear otherwise). Vectors: the same with `Dense` layers.
    """
    if kind not in ("nonlinear", "linear"):
        raise ValueError(
            f"aligner must be 'nonlinear' or 'linear', got '{kind}'."
        )
    if len(student_shape) != len(teacher_shape) or len(student_shape) not in (
        2,
        4,
    ):
        raise ValueError(
            f"Cannot align a student feature of shape {student_shape} with a "
            f"teacher feature of shape {teacher_shape}: both must be feature "
            f"maps (batch, H, W, C) or both vectors (batch, C). Pick layers "
            f"of the same kind."
        )
    channels = teacher_shape[-1]
    stack = []
    if len(student_shape) == 4:
        (sh, sw), (th, tw) = student_shape[1:3], teacher_shape[1:3]
        if (sh, sw) != (th, tw):
            if sh % th == 0 and sw % tw == 0:
                stack.append(layers.AveragePooling2D((sh // th, sw // tw), dtype="float32"))
            else:
                stack.append(layers.Resizing(th, tw, "bilinear", dtype="float32"))

        def project(units):
            return layers.Conv2D(units, 1, use_bias=False, dtype="float32")

    else:

        def project(units):
            return layers.Dense(units, use_bias=False, dtype="float32")

    stack += [project(channels), layers.BatchNormalization(dtype="float32")]
    if kind == "nonlinear":
        stack += [layers.ReLU(dtype="float32"), project(channels)]
    return keras.Sequential(stack, name=name)


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureAlignment(DistillationTerm):
    """FA: non-linear feature alignment (docs/methods.md §1); FitNets if linear.

    A trainable aligner `g_m` per teacher maps the student feature to the
    teacher's: `Σ_m w_m · mean((g_m(F_s) − F_t^m)²)` per sample. Channel
    counts and spatial sizes may differ. The aligners train with the
    student and are not part of `distiller.student`.

    Example:

    ```python
    fa = kd.losses.FeatureAlignment("stage3", "stage3", aligner="nonlinear")
    distiller = kd.Distiller(
        teacher, student, [kd.losses.LogitsDistillation(), fa],
        distillation_loss_weights=[0.9, 100.0], student_loss_weight=0.5)
    ```
    """

    def __init__(self, teacher_layer_name, student_layer_name,
                 aligner="nonlinear", **kwargs):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if aligner not in ("nonlinear", "linear"):
            raise ValueError(
                f"aligner must be 'nonlinear' or 'linear', got '{aligner}'."
            )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.aligner = aligner

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shape = tuple(student_outputs_shape[self.student_layer_name])
        self.aligners = []
        for i, shapes in enumerate(teacher_outputs_shape):
            teacher_shape = tuple(shapes[self.teacher_layer_name])
            aligner = make_aligner(
                student_shape, teacher_shape, self.aligner,
                name=f"aligner_{i}",
            )
            aligner.build(student_shape)
            self.aligners.append(aligner)

    def call(self, teacher_outputs, student_outputs, labels=None,
             teacher_weights=None, training=None):
        f_s = ops.cast(student_outputs[self.student_layer_name], "float32")
        total = 0.0
        for w, aligner, out in zip(
            teacher_weights, self.aligners, teacher_outputs
        ):
            f_t = ops.cast(out[self.teacher_layer_name], "float32")
            aligned = aligner(f_s, training=training)
            total = total + w * per_sample_mean(ops.square(aligned - f_t))
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "aligner": self.aligner,
        }
