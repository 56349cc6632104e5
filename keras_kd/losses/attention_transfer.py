import keras
import numpy as np
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import common_map_sizes


def adaptive_pool_matrix(in_size, out_size):
    """The `(out_size, in_size)` matrix of 1-D adaptive average pooling.

    Output cell `i` averages the inputs `floor(i·in/out)` to
    `ceil((i+1)·in/out) − 1`, as PyTorch's `AdaptiveAvgPool`: plain average
    pooling for an integer factor, overlapping bins otherwise, and
    nearest-neighbour repetition when `out_size > in_size`.
    """
    matrix = np.zeros((out_size, in_size), "float32")
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def spatial_attention(feature, size=None, pool="features"):
    """`L2-normalise(flatten(mean_c(F²)))` of an NHWC map, in float32.

    With `size=(h, w)` the map is adaptive-average-pooled to h×w, either the
    feature map before it is squared (`pool="features"`, as AT's official
    code, RepDistiller `distiller_zoo/AT.py`) or the energy map
    `mean_c(F²)` (`pool="energy"`, as AFD's official `Sample`). Pooling is
    one matrix product per spatial axis (`adaptive_pool_matrix`), exact for
    any pair of sizes.

    Example:

    ```python
    a = spatial_attention(ops.ones((2, 8, 8, 16)), size=(4, 4))  # (2, 16)
    ```
    """
    if pool not in ("features", "energy"):
        raise ValueError(f"pool must be 'features' or 'energy', got '{pool}'.")
    feature = ops.cast(feature, "float32")
    height, width = feature.shape[1:3]
    resize = size is not None and tuple(size) != (height, width)
    if resize:
        rows = adaptive_pool_matrix(height, size[0])
        cols = adaptive_pool_matrix(width, size[1])
    if resize and pool == "features":
        feature = ops.einsum("ih,bhwc,jw->bijc", rows, feature, cols)
    energy = ops.mean(ops.square(feature), axis=-1)
    if resize and pool == "energy":
        energy = ops.einsum("ih,bhw,jw->bij", rows, energy, cols)
    flat = ops.reshape(energy, (ops.shape(energy)[0], -1))
    # As torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
    return ops.normalize(flat, axis=-1, epsilon=1e-24)


def feature_map_shape(shapes, name, role):
    """The `(H, W)` of a named NHWC feature map, or a ValueError."""
    shape = tuple(shapes[name])
    if len(shape) != 4:
        raise ValueError(
            f"Attention terms need feature maps (batch, H, W, C), but the "
            f"{role} output '{name}' has shape {shape}. Pick convolutional "
            f"layers."
        )
    return shape[1:3]


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(DistillationTerm):
    """AT (Zagoruyko & Komodakis): match spatial attention maps per stage.

    For each pair of layers, `a(F) = L2-normalise(flatten(mean_c(F²)))` and
    the loss per sample is `Σ_pairs mean_pixels((a(F_s) − a(F_t))²)`. When
    the two maps of a pair differ in size, the larger feature map is
    adaptive-average-pooled to the smaller size before its attention is
    taken, as the official code does (see `spatial_attention`). With
    several teachers the loss is `Σ_m w_m · L_AT(teacher m)`. The paper's
    weight of 1000 is the Distiller weight.

    Args:
        teacher_layer_names: teacher layer names (NHWC maps), one per stage.
        student_layer_names: student layer names, paired in order.

    Example:

    ```python
    at = kd.losses.AttentionTransfer(["stage1", "stage2", "stage3"],
                                     ["stage1", "stage2", "stage3"])
    distiller = kd.Distiller(teacher, student, at,
                             distillation_loss_weights=[1000.0],
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def __init__(self, teacher_layer_names, student_layer_names, **kwargs):
        teacher_layer_names = _as_list(teacher_layer_names)
        student_layer_names = _as_list(student_layer_names)
        if len(teacher_layer_names) != len(student_layer_names) or not (
            teacher_layer_names
        ):
            raise ValueError(
                f"AttentionTransfer pairs teacher and student layers in "
                f"order, so it needs two non-empty lists of the same length; "
                f"got {len(teacher_layer_names)} teacher layers "
                f"{teacher_layer_names} and {len(student_layer_names)} "
                f"student layers {student_layer_names}."
            )
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        # Per teacher, per pair: the common H×W both maps are pooled to.
        self.pair_sizes = common_map_sizes(
            self, teacher_outputs_shape, student_outputs_shape, feature_map_shape)

    def call(self, teacher_outputs, student_outputs, labels=None,
             teacher_weights=None):
        total = 0.0
        for w, out, sizes in zip(teacher_weights, teacher_outputs,
                                 self.pair_sizes):
            for t_name, s_name, size in zip(
                self.teacher_layer_names, self.student_layer_names, sizes
            ):
                a_t = spatial_attention(out[t_name], size)
                a_s = spatial_attention(student_outputs[s_name], size)
                total = total + w * ops.mean(ops.square(a_s - a_t), axis=-1)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_names": self.teacher_layer_names,
            "student_layer_names": self.student_layer_names,
        }


def _as_list(names):
    return [names] if isinstance(names, str) else list(names)
