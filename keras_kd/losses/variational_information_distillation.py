import math

import keras
from keras import layers
from keras import ops

from keras_kd.losses.attention_transfer import adaptive_pool_matrix
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import per_sample_mean


def adaptive_average_pool(feature, size):
    """Adaptive average pooling of an NHWC map to `size = (h, w)`, float32."""
    height, width = feature.shape[1:3]
    feature = ops.cast(feature, "float32")
    if tuple(size) == (height, width):
        return feature
    rows = adaptive_pool_matrix(height, size[0])
    cols = adaptive_pool_matrix(width, size[1])
    return ops.einsum("ih,bhwc,jw->bijc", rows, feature, cols)


def _regressor(mid_channels, out_channels, name):
    """`Conv1×1 → ReLU → Conv1×1 → ReLU → Conv1×1`, bias-free, as VID's.

    Kernels start as PyTorch's default `Conv2d` initialisation,
    `U(±1/sqrt(fan_in))`, which the official code keeps.
    """

    def conv(units):
        return layers.Conv2D(
            units, 1, use_bias=False, dtype="float32",
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform"),
        )

    return keras.Sequential(
        [conv(mid_channels), layers.ReLU(dtype="float32"),
         conv(mid_channels), layers.ReLU(dtype="float32"),
         conv(out_channels)],
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_kd")
class VariationalInformationDistillation(DistillationTerm):
    """VID (Ahn et al., CVPR 2019): a Gaussian likelihood of teacher maps.

    For each pair of layers a regressor `μ(·)` (three 1×1 convolutions with
    ReLUs between, `C_s → C_t → C_t → C_t`) predicts the teacher map from
    the student's, and a learned variance per teacher channel,
    `σ²_c = softplus(α_c) + eps`, weighs the error. The loss per sample is

    `Σ_pairs mean_{h,w,c} ½ (log σ²_c + (μ(F_s) − F_t)² / σ²_c)`

    (the batch mean is the official `torch.mean` over the whole tensor).
    `α` starts at `log(exp(init_pred_var − eps) − 1)`, so `σ²` starts at
    `init_pred_var`. When the two maps of a pair differ in height, the
    larger one is adaptive-average-pooled to the smaller size before the
    regressor. With several teachers each has its own regressors and
    variances and the loss is `Σ_m w_m · L_VID(teacher m)`. The regressors
    and variances train with the student and are not part of it.

    Args:
        teacher_layer_names: teacher layer names (NHWC maps), one per pair.
        student_layer_names: student layer names, paired in order.
        init_pred_var: the variance every channel starts at (5.0).
        eps: the variance's lower bound (1e-5).

    Example:

    ```python
    vid = kd.losses.VariationalInformationDistillation(
        ["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"])
    distiller = kd.Distiller(teacher, student, vid,
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def __init__(self, teacher_layer_names, student_layer_names,
                 init_pred_var=5.0, eps=1e-5, **kwargs):
        teacher_layer_names = _as_list(teacher_layer_names)
        student_layer_names = _as_list(student_layer_names)
        if len(teacher_layer_names) != len(student_layer_names) or not (
            teacher_layer_names
        ):
            raise ValueError(
                f"VariationalInformationDistillation pairs teacher and "
                f"student layers in order, so it needs two non-empty lists "
                f"of the same length; got {len(teacher_layer_names)} teacher "
                f"layers {teacher_layer_names} and "
                f"{len(student_layer_names)} student layers "
                f"{student_layer_names}."
            )
        if not init_pred_var > eps > 0:
            raise ValueError(
                f"VID needs init_pred_var > eps > 0 (the variance starts at "
                f"init_pred_var and never drops below eps); got "
                f"init_pred_var={init_pred_var}, eps={eps}."
            )
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shapes = [
            _map_shape(student_outputs_shape, name, "student")
            for name in self.student_layer_names
        ]
        alpha = math.log(math.expm1(self.init_pred_var - self.eps))
        self.regressors, self.log_scales, self.pool_sizes = [], [], []
        for m, shapes in enumerate(teacher_outputs_shape):
            for i, (name, s_shape) in enumerate(
                zip(self.teacher_layer_names, student_shapes)
            ):
                t_shape = _map_shape(shapes, name, "teacher")
                # The official code compares heights: the taller map is
                # pooled to the other's size.
                size = s_shape[1:3] if s_shape[1] < t_shape[1] else t_shape[1:3]
                channels = t_shape[-1]
                regressor = _regressor(channels, channels, f"regressor_{m}_{i}")
                regressor.build((None,) + tuple(size) + (s_shape[-1],))
                self.regressors.append(regressor)
                self.log_scales.append(self.add_weight(
                    shape=(channels,), name=f"log_scale_{m}_{i}",
                    initializer=keras.initializers.Constant(alpha),
                ))
                self.pool_sizes.append(tuple(size))

    def call(self, teacher_outputs, student_outputs, labels=None,
             teacher_weights=None):
        total, k = 0.0, 0
        for w, out in zip(teacher_weights, teacher_outputs):
            for t_name, s_name in zip(
                self.teacher_layer_names, self.student_layer_names
            ):
                size = self.pool_sizes[k]
                f_s = adaptive_average_pool(student_outputs[s_name], size)
                f_t = adaptive_average_pool(out[t_name], size)
                mean = self.regressors[k](f_s)
                var = ops.softplus(self.log_scales[k]) + self.eps
                nll = 0.5 * (ops.log(var) + ops.square(mean - f_t) / var)
                total = total + w * per_sample_mean(nll)
                k += 1
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_names": self.teacher_layer_names,
            "student_layer_names": self.student_layer_names,
            "init_pred_var": self.init_pred_var,
            "eps": self.eps,
        }


def _map_shape(shapes, name, role):
    shape = tuple(shapes[name])
    if len(shape) != 4:
        raise ValueError(
            f"VariationalInformationDistillation needs feature maps (batch, "
            f"H, W, C), but the {role} output '{name}' has shape {shape}. "
            f"Pick convolutional layers (e.g. the stage outputs)."
        )
    return shape


def _as_list(names):
    return [names] if isinstance(names, str) else list(names)
