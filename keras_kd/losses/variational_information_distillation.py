import math

import keras
from keras import layers
from keras import ops

from keras_kd.losses.attention_transfer import adaptive_pool_matrix
from keras_kd.losses.base import per_sample_mean
from keras_kd.losses.layer_pairs import LayerPairTerm


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
            units,
            1,
            use_bias=False,
            dtype="float32",
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform"
            ),
        )

    return keras.Sequential(
        [
            conv(mid_channels),
            layers.ReLU(dtype="float32"),
            conv(mid_channels),
            layers.ReLU(dtype="float32"),
            conv(out_channels),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_kd")
class VariationalInformationDistillation(LayerPairTerm):
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

    def __init__(
        self,
        teacher_layer_names,
        student_layer_names,
        init_pred_var=5.0,
        eps=1e-5,
        **kwargs,
    ):
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)
        if not init_pred_var > eps > 0:
            raise ValueError(
                f"VID needs init_pred_var > eps > 0 (the variance starts at "
                f"init_pred_var and never drops below eps); got "
                f"init_pred_var={init_pred_var}, eps={eps}."
            )
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        pair_shapes = self.pair_shapes(teacher_outputs_shape, student_outputs_shape)
        alpha = math.log(math.expm1(self.init_pred_var - self.eps))
        self.regressors, self.log_scales, self.pool_sizes = [], [], []
        for m, pairs in enumerate(pair_shapes):
            for i, (t_shape, s_shape) in enumerate(pairs):
                # The official code compares heights: the taller map is
                # pooled to the other's size.
                size = s_shape[1:3] if s_shape[1] < t_shape[1] else t_shape[1:3]
                channels = t_shape[-1]
                regressor = _regressor(channels, channels, f"regressor_{m}_{i}")
                regressor.build((None,) + tuple(size) + (s_shape[-1],))
                self.regressors.append(regressor)
                self.log_scales.append(
                    self.add_weight(
                        shape=(channels,),
                        name=f"log_scale_{m}_{i}",
                        initializer=keras.initializers.Constant(alpha),
                    )
                )
                self.pool_sizes.append(tuple(size))

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        n = len(self.teacher_layer_names)

        def pair_loss(m, i, f_t, f_s):
            k = m * n + i
            size = self.pool_sizes[k]
            mean = self.regressors[k](adaptive_average_pool(f_s, size))
            f_t = adaptive_average_pool(f_t, size)
            var = ops.softplus(self.log_scales[k]) + self.eps
            nll = 0.5 * (ops.log(var) + ops.square(mean - f_t) / var)
            return per_sample_mean(nll)

        return self.sum_over_pairs(
            teacher_outputs, student_outputs, teacher_weights, pair_loss
        )

    def get_config(self):
        return {
            **super().get_config(),
            "init_pred_var": self.init_pred_var,
            "eps": self.eps,
        }
