import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.losses.layer_pairs import LayerPairTerm
from keras_kd.losses.layer_pairs import layer_names
from keras_kd.losses.variational_information_distillation import adaptive_average_pool
from keras_kd.models import batch_norm_before

_PRE_RELU = (
    "Pick the pre-ReLU convolutional layers (kd.models.preactivation_layer_names)."
)


def margin_from_batch_norm(layer):
    """OFD's per-channel margin `E[x | x < 0]` for `x ~ N(β, γ²)`, float32.

    A batch norm's output in channel `c` is taken as Gaussian with mean
    `β_c` and standard deviation `|γ_c|`; the margin is the mean of its
    negative part, `β − |γ| φ(β/|γ|) / Φ(−β/|γ|)`, or `−3|γ|` when
    `Φ(−β/|γ|) ≤ 0.001` (almost no negative values), as the official code.
    A channel with `γ = 0` (a constant `β`) gets `min(β, 0)`.

    Example:

    ```python
    margin_from_batch_norm(teacher.get_layer("block3_1_2_bn"))  # (C,)
    ```
    """
    channels = layer.moving_mean.shape[0]
    gamma = (
        np.ones(channels)
        if layer.gamma is None
        else np.asarray(ops.convert_to_numpy(layer.gamma), "float64")
    )
    beta = (
        np.zeros(channels)
        if layer.beta is None
        else np.asarray(ops.convert_to_numpy(layer.beta), "float64")
    )
    margins = []
    for g, b in zip(np.abs(gamma), beta):
        if g == 0.0:
            margins.append(min(b, 0.0))
            continue
        z = b / g
        below = 0.5 * math.erfc(z / math.sqrt(2.0))  # Φ(−β/|γ|)
        if below > 0.001:
            density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
            margins.append(b - g * density / below)
        else:
            margins.append(-3.0 * g)
    return np.asarray(margins, "float32")


def _connector(channels, name):
    """`Conv1×1 → BN` from the student's channels to the teacher's.

    Kernels start at `N(0, 2 / C_t)`, the batch norm at `γ = 1, β = 0`, as
    the official connector.
    """
    return keras.Sequential(
        [
            layers.Conv2D(
                channels,
                1,
                use_bias=False,
                dtype="float32",
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=math.sqrt(2.0 / channels)
                ),
            ),
            layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float32"),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="keras_kd")
class OverhaulFeatureDistillation(LayerPairTerm):
    """OFD (Heo et al., ICCV 2019): partial L2 between pre-ReLU features.

    The student's pre-ReLU map goes through a connector `r` (1×1 conv + BN)
    to the teacher's width; the teacher's pre-ReLU map `T` is
    adaptive-average-pooled to the student's size and clipped from below at
    a per-channel margin `m` (the mean of the negative part of the
    teacher's batch norm output, `margin_from_batch_norm`):
    `t = max(T, m)`. The partial L2 skips positions where both the target
    and the student are non-positive and the student is below it:

    `d(s, t) = (s − t)² if s > t or t > 0, else 0`,

    summed over positions and channels. Pairs are weighted
    `1 / 2^(n − 1 − i)` (the last pair 1, the one before ½, ...), and the
    loss per sample is `Σ_i d_i / 2^(n−1−i)`; the batch mean and the
    paper's weight 1e-3 give the official `sum / batch / 1000`. With several
    teachers each has its own connectors and margins and the loss is
    `Σ_m w_m · L_OFD(teacher m)`. The connectors train with the student and
    are not part of it.

    Args:
        teacher_layer_names: the teacher's pre-ReLU layers (NHWC), in order.
        student_layer_names: the student's pre-ReLU layers, paired in order.
        margins: one list per teacher of one per-channel margin vector per
            teacher layer. `OverhaulFeatureDistillation.from_teacher`
            computes them from the teacher's batch norms.

    Example:

    ```python
    names = kd.models.preactivation_layer_names
    ofd = kd.losses.OverhaulFeatureDistillation.from_teacher(
        teacher, names(teacher), names(student))
    distiller = kd.Distiller(teacher, student, ofd,
                             distillation_loss_weights=[1e-3],
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def __init__(self, teacher_layer_names, student_layer_names, margins, **kwargs):
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)
        self.margins = [
            [[float(v) for v in np.ravel(margin)] for margin in per_teacher]
            for per_teacher in margins
        ]
        for per_teacher in self.margins:
            if len(per_teacher) != len(self.teacher_layer_names):
                raise ValueError(
                    f"OverhaulFeatureDistillation got {len(per_teacher)} "
                    f"margin vectors for a teacher but "
                    f"{len(self.teacher_layer_names)} teacher layers; give "
                    f"one per layer (OverhaulFeatureDistillation.from_teacher "
                    f"computes them)."
                )

    @classmethod
    def from_teacher(
        cls,
        teacher,
        teacher_layer_names,
        student_layer_names,
        teacher_bn_layer_names=None,
        **kwargs,
    ):
        """The term with margins from the teacher(s)' batch norms.

        `teacher_bn_layer_names` names the batch norm before each tapped
        layer's ReLU; by default `kd.models.batch_norm_before` finds it
        (the tap itself, or the batch norm feeding a residual sum).
        """
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        teacher_layer_names = layer_names(teacher_layer_names)
        if teacher_bn_layer_names is None:
            norms = [
                [batch_norm_before(model, name) for name in teacher_layer_names]
                for model in teachers
            ]
        else:
            teacher_bn_layer_names = layer_names(teacher_bn_layer_names)
            if len(teacher_bn_layer_names) != len(teacher_layer_names):
                raise ValueError(
                    f"Got {len(teacher_bn_layer_names)} "
                    f"teacher_bn_layer_names for {len(teacher_layer_names)} "
                    f"teacher layers; name one batch norm per layer."
                )
            norms = [
                [model.get_layer(name) for name in teacher_bn_layer_names]
                for model in teachers
            ]
        margins = [
            [margin_from_batch_norm(bn) for bn in per_teacher] for per_teacher in norms
        ]
        return cls(teacher_layer_names, student_layer_names, margins, **kwargs)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(self.margins) != len(teacher_outputs_shape):
            raise ValueError(
                f"OverhaulFeatureDistillation has margins for "
                f"{len(self.margins)} teachers but the Distiller has "
                f"{len(teacher_outputs_shape)}; build the term with "
                f"OverhaulFeatureDistillation.from_teacher(teachers, ...)."
            )
        pair_shapes = self.pair_shapes(
            teacher_outputs_shape, student_outputs_shape, hint=_PRE_RELU
        )
        self.connectors, self._margin_arrays = [], []
        for m, (pairs, margins) in enumerate(zip(pair_shapes, self.margins)):
            for i, (name, (t_shape, s_shape), margin) in enumerate(
                zip(self.teacher_layer_names, pairs, margins)
            ):
                channels = t_shape[-1]
                if len(margin) != channels:
                    raise ValueError(
                        f"Teacher {m} layer '{name}' has {channels} channels "
                        f"but its margin has {len(margin)} values; compute "
                        f"the margins from the batch norm before that "
                        f"layer's ReLU."
                    )
                connector = _connector(channels, f"connector_{m}_{i}")
                connector.build(s_shape)
                self.connectors.append(connector)
                self._margin_arrays.append(np.asarray(margin, "float32"))

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
    ):
        n = len(self.teacher_layer_names)

        def pair_loss(m, i, f_t, f_s):
            k = m * n + i
            source = self.connectors[k](ops.cast(f_s, "float32"), training=training)
            target = adaptive_average_pool(f_t, tuple(source.shape[1:3]))
            target = ops.maximum(target, self._margin_arrays[k])
            keep = ops.logical_or(source > target, target > 0.0)
            d = ops.where(keep, ops.square(source - target), 0.0)
            d = ops.sum(ops.reshape(d, (ops.shape(d)[0], -1)), axis=-1)
            return d / 2.0 ** (n - 1 - i)

        return self.sum_over_pairs(
            teacher_outputs, student_outputs, teacher_weights, pair_loss
        )

    def get_config(self):
        return {**super().get_config(), "margins": self.margins}
