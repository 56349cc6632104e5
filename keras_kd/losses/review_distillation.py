import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.losses.base import DistillationTerm

#: Pyramid levels of the hierarchical context loss (mdistiller hcl_loss).
PYRAMID_LEVELS = (4, 2, 1)


def nearest_resize(x, size):
    """PyTorch's `F.interpolate(mode="nearest")` of NHWC `x` to `size`.

    Output pixel `o` reads input pixel `floor(o · in / out)` on each axis.
    """
    for axis, out in zip((1, 2), size):
        n = x.shape[axis]
        if n != out:
            index = np.floor(np.arange(out) * (n / out)).astype("int32")
            x = ops.take(x, index, axis=axis)
    return x


def adaptive_pool_matrix(n, level):
    """`(level, n)` averaging weights of PyTorch's adaptive average pooling.

    Bin `i` covers `[floor(i·n/level), ceil((i+1)·n/level))`.
    """
    weights = np.zeros((level, n), "float32")
    for i in range(level):
        start, end = (i * n) // level, -((-(i + 1) * n) // level)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def hierarchical_context_loss(f_s, f_t):
    """HCL of one NHWC pair, per sample.

    `mse(f_s, f_t)` plus, for each level `l` in (4, 2, 1) smaller than the
    height, the MSE of both maps average-pooled to `l × l` with weights
    1/2, 1/4, 1/8 of the levels used; divided by the sum of the weights.
    """

    def mse(a, b):
        return ops.mean(ops.reshape(ops.square(a - b), (ops.shape(a)[0], -1)), -1)

    loss, weight, total = mse(f_s, f_t), 1.0, 1.0
    height, width = f_s.shape[1], f_s.shape[2]
    for level in PYRAMID_LEVELS:
        if level >= height:
            continue
        rows = adaptive_pool_matrix(height, level)
        cols = adaptive_pool_matrix(width, level)

        def pool(x):
            return ops.einsum("ih,bhwc,jw->bijc", rows, x, cols)

        weight /= 2.0
        loss = loss + weight * mse(pool(f_s), pool(f_t))
        total += weight
    return loss / total


def _conv_initializer():
    # PyTorch's kaiming_uniform_(a=1): uniform in ±sqrt(3 / fan_in).
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionBasedFusion(layers.Layer):
    """ABF: one stage of ReviewKD's review path (mdistiller ReviewKD.py).

    `x = BN(Conv1×1(F_s))` to `mid_channels`; when `fuse`, the deeper
    stage's residual `r` is resized (nearest) to `x`'s size and
    `x = x · a₀ + r · a₁` with `a = sigmoid(Conv1×1([x, r]))` (two maps);
    `x` is resized (nearest) to `out_size` and the output is
    `BN(Conv3×3(x))` with `out_channels`. Returns `(output, x)`; `x` is the
    residual of the next, shallower stage.
    """

    def __init__(self, mid_channels, out_channels, out_size, fuse, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.out_size = tuple(out_size)
        self.fuse = fuse
        self.reduce = layers.Conv2D(
            mid_channels,
            1,
            use_bias=False,
            kernel_initializer=_conv_initializer(),
            dtype="float32",
        )
        self.reduce_bn = layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype="float32"
        )
        self.attention = None
        if fuse:
            self.attention = layers.Conv2D(
                2,
                1,
                activation="sigmoid",
                dtype="float32",
                kernel_initializer=keras.initializers.VarianceScaling(
                    1.0 / 3.0, "fan_in", "uniform"
                ),
            )
        self.output_conv = layers.Conv2D(
            out_channels,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=_conv_initializer(),
            dtype="float32",
        )
        self.output_bn = layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, dtype="float32"
        )

    def build(self, input_shape, residual_shape=None):
        h, w = input_shape[1:3]
        self.reduce.build(input_shape)
        self.reduce_bn.build((None, h, w, self.mid_channels))
        if self.fuse:
            self.attention.build((None, h, w, 2 * self.mid_channels))
        self.output_conv.build((None, *self.out_size, self.mid_channels))
        self.output_bn.build((None, *self.out_size, self.out_channels))

    def call(self, x, residual=None, training=None):
        x = self.reduce_bn(self.reduce(x), training=training)
        if self.fuse:
            residual = nearest_resize(residual, x.shape[1:3])
            a = self.attention(ops.concatenate([x, residual], axis=-1))
            x = x * a[..., :1] + residual * a[..., 1:]
        x = nearest_resize(x, self.out_size)
        return self.output_bn(self.output_conv(x), training=training), x

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        return {
            **config,
            "mid_channels": self.mid_channels,
            "out_channels": self.out_channels,
            "out_size": self.out_size,
            "fuse": self.fuse,
        }


def _as_map(x):
    """A `(batch, C)` vector as a `(batch, 1, 1, C)` map."""
    x = ops.cast(x, "float32")
    return x[:, None, None, :] if len(x.shape) == 2 else x


@keras.saving.register_keras_serializable(package="keras_kd")
class ReviewDistillation(DistillationTerm):
    """ReviewKD: knowledge review (Chen et al., CVPR 2021).

    The student's features, shallow to deep, are fused from the deepest
    stage back by one `AttentionBasedFusion` each (the deepest does not
    fuse); each output has the shape of its teacher feature and the loss is
    the sum over stages of the `hierarchical_context_loss`, times `factor`.
    Vectors (e.g. the pooled `"features"`) are treated as 1×1 maps. The
    fusion layers train with the student and are not part of it.

    mdistiller taps the student's stage outputs and pooled vector and the
    teacher's stage outputs before their last ReLU and its pooled vector;
    with `warmup_epochs`, `on_epoch_begin(epoch)` (0-based) sets `factor`
    to `min((epoch + 1) / warmup_epochs, 1)`, as mdistiller's
    `min(epoch / 20, 1)` with epochs counted from 1.

    Example:

    ```python
    review = kd.losses.ReviewDistillation(
        ["block1_2_add", "block2_2_add", "block3_2_add", "features"],
        ["stage1", "stage2", "stage3", "features"])
    distiller = kd.Distiller(teacher, student, [review],
                             student_loss_weight=1.0, weighting="additive")
    ```
    """

    def __init__(
        self,
        teacher_layer_names,
        student_layer_names,
        mid_channels=None,
        warmup_epochs=0,
        **kwargs,
    ):
        teacher_layer_names = list(teacher_layer_names)
        student_layer_names = list(student_layer_names)
        if not student_layer_names or len(teacher_layer_names) != len(
            student_layer_names
        ):
            raise ValueError(
                f"ReviewDistillation pairs teacher and student layers stage "
                f"by stage (shallow to deep); got {len(teacher_layer_names)} "
                f"teacher and {len(student_layer_names)} student layer names. "
                f"Give the same, non-zero number of each."
            )
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)
        self.mid_channels = mid_channels
        self.warmup_epochs = warmup_epochs

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(teacher_outputs_shape) != 1:
            raise ValueError(
                f"ReviewDistillation distils one teacher, got "
                f"{len(teacher_outputs_shape)}; use one term per teacher."
            )
        student_shapes = [
            _map_shape(student_outputs_shape[n], n, "student")
            for n in self.student_layer_names
        ]
        teacher_shapes = [
            _map_shape(teacher_outputs_shape[0][n], n, "teacher")
            for n in self.teacher_layer_names
        ]
        # mdistiller: mid_channel = min(512, in_channels[-1]).
        mid = self.mid_channels or min(512, student_shapes[-1][-1])
        last = len(student_shapes) - 1
        self.fusions = []
        for i, (s_shape, t_shape) in enumerate(zip(student_shapes, teacher_shapes)):
            fusion = AttentionBasedFusion(
                mid, t_shape[-1], t_shape[1:3], fuse=i < last, name=f"abf_{i}"
            )
            fusion.build(s_shape)
            self.fusions.append(fusion)
        self.factor = self.add_weight(
            (),
            keras.initializers.Constant(1.0),
            trainable=False,
            name="factor",
        )

    def on_epoch_begin(self, epoch):
        """Sets the warm-up `factor` for the 0-based `epoch`."""
        if self.warmup_epochs:
            self.factor.assign(min((epoch + 1) / self.warmup_epochs, 1.0))

    def fuse(self, student_features, training=None):
        """The fused student features, shallow to deep."""
        outputs = [None] * len(student_features)
        residual = None
        for i in reversed(range(len(student_features))):
            outputs[i], residual = self.fusions[i](
                _as_map(student_features[i]), residual, training=training
            )
        return outputs

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
    ):
        fused = self.fuse(
            [student_outputs[n] for n in self.student_layer_names], training
        )
        loss = 0.0
        for f_s, name in zip(fused, self.teacher_layer_names):
            f_t = _as_map(teacher_outputs[0][name])
            loss = loss + hierarchical_context_loss(f_s, f_t)
        return ops.convert_to_tensor(self.factor) * loss

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_names": self.teacher_layer_names,
            "student_layer_names": self.student_layer_names,
            "mid_channels": self.mid_channels,
            "warmup_epochs": self.warmup_epochs,
        }


def _map_shape(shape, name, role):
    shape = tuple(shape)
    if len(shape) == 2:
        return (shape[0], 1, 1, shape[1])
    if len(shape) != 4 or None in shape[1:]:
        raise ValueError(
            f"ReviewDistillation reads feature maps (batch, H, W, C) or "
            f"vectors (batch, C); the {role} layer '{name}' has shape {shape}."
        )
    return shape
