import keras
from keras import layers
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import per_sample_mean

ALIGNERS = ("nonlinear", "linear", "hint")


def hint_regressor(student_shape, teacher_shape, name=None):
    """FitNets' convolutional regressor, as RepDistiller's `ConvReg`.

    One biased convolution chosen by the two heights, then BN and ReLU:
    a 3×3 stride-2 convolution (padding 1) when the student map is twice
    the teacher's size, a 4×4 stride-2 transposed convolution (padding 1)
    when it is half, and otherwise a valid convolution of kernel
    `(1 + H_s − H_t, 1 + W_s − W_t)` (1×1 for equal sizes). Batch norm
    uses PyTorch's momentum 0.1 and epsilon 1e-5.

    Example:

    ```python
    reg = hint_regressor((None, 16, 16, 64), (None, 16, 16, 128))
    ```
    """
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise ValueError(
            f"The FitNets hint regressor (aligner='hint') maps feature maps "
            f"(batch, H, W, C), got student {student_shape} and teacher "
            f"{teacher_shape}. Pick convolutional layers, or use "
            f"aligner='linear' for vectors."
        )
    (sh, sw, _), (th, tw, channels) = student_shape[1:], teacher_shape[1:]
    stack = []
    if sh == 2 * th:
        stack += [
            layers.ZeroPadding2D(1, dtype="float32"),
            layers.Conv2D(channels, 3, 2, dtype="float32"),
        ]
    elif 2 * sh == th:
        stack.append(
            layers.Conv2DTranspose(channels, 4, 2, padding="same", dtype="float32")
        )
    elif sh >= th and sw >= tw:
        stack.append(
            layers.Conv2D(channels, (1 + sh - th, 1 + sw - tw), dtype="float32")
        )
    else:
        raise ValueError(
            f"The FitNets hint regressor cannot map a student map of "
            f"{sh}×{sw} to a teacher map of {th}×{tw}: the student map must "
            f"be half, twice, or at least the teacher's size. Pick another "
            f"hint layer pair."
        )
    stack += [
        layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float32"),
        layers.ReLU(dtype="float32"),
    ]
    return keras.Sequential(stack, name=name)


def make_aligner(student_shape, teacher_shape, kind="nonlinear", name=None):
    """A trainable map from a student feature to a teacher feature's shape.

    Maps (NHWC): `Conv1×1(C_s→C_t) → BN → ReLU → Conv1×1(C_t→C_t)`
    (`"nonlinear"`) or `Conv1×1 → BN` (`"linear"`, SKD's adapter), after
    resizing the student map to the teacher's H×W (average pooling for an
    integer factor, bilinear otherwise). Vectors: the same with `Dense`
    layers. `"hint"` is FitNets' regressor (`hint_regressor`).
    """
    if kind not in ALIGNERS:
        raise ValueError(f"aligner must be one of {ALIGNERS}, got '{kind}'.")
    if kind == "hint":
        return hint_regressor(student_shape, teacher_shape, name=name)
    if len(student_shape) != len(teacher_shape) or len(student_shape) not in (
        2,
        4,
    ):
        raise ValueError(
            f"Cannot align a student feature of shape {student_shape} with a "
            f"teacher feature of shape {teacher_shape}: both must be feature "
            f"maps (batch, H, W, C) or both vectors (batch, C). Pick layers "
            f"of the same kind (for sequence features (batch, length, C) of "
            f"one shape, kd.losses.FeatureDistillation compares each token)."
        )
    channels = teacher_shape[-1]
    stack = []
    if len(student_shape) == 4:
        (sh, sw), (th, tw) = student_shape[1:3], teacher_shape[1:3]
        if (sh, sw) != (th, tw):
            if sh % th == 0 and sw % tw == 0:
                stack.append(
                    layers.AveragePooling2D((sh // th, sw // tw), dtype="float32")
                )
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
    """FA: non-linear feature alignment (docs/methods.md §1); FitNets with "hint".

    A trainable aligner `g_m` per teacher maps the student feature to the
    teacher's: `Σ_m w_m · mean((g_m(F_s) − F_t^m)²)` per sample. Channel
    counts and spatial sizes may differ. The aligners train with the
    student and are not part of `distiller.student`. `aligner="hint"` is
    FitNets' regressor (Conv-BN-ReLU, `hint_regressor`), to pair with
    `keras_kd.models.hint_layer_names`.

    Example:

    ```python
    fa = kd.losses.FeatureAlignment("stage3", "stage3", aligner="nonlinear")
    distiller = kd.Distiller(
        teacher, student, [kd.losses.LogitsDistillation(), fa],
        distillation_loss_weights=[0.9, 100.0], student_loss_weight=0.5)
    ```
    """

    def __init__(
        self, teacher_layer_name, student_layer_name, aligner="nonlinear", **kwargs
    ):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if aligner not in ALIGNERS:
            raise ValueError(f"aligner must be one of {ALIGNERS}, got '{aligner}'.")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.aligner = aligner

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shape = tuple(student_outputs_shape[self.student_layer_name])
        self.aligners = []
        for i, shapes in enumerate(teacher_outputs_shape):
            teacher_shape = tuple(shapes[self.teacher_layer_name])
            aligner = make_aligner(
                student_shape,
                teacher_shape,
                self.aligner,
                name=f"aligner_{i}",
            )
            aligner.build(student_shape)
            self.aligners.append(aligner)

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
    ):
        f_s = ops.cast(student_outputs[self.student_layer_name], "float32")
        total = 0.0
        for w, aligner, out in zip(teacher_weights, self.aligners, teacher_outputs):
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
