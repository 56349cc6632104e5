import keras
import numpy as np
from keras import ops

from keras_kd.losses.layer_pairs import LayerPairTerm


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


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(LayerPairTerm):
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

    def build(self, teacher_outputs_shape, student_outputs_shape):
        # Per teacher, per pair: the common H×W both maps are pooled to.
        self.pair_sizes = self.common_map_sizes(
            teacher_outputs_shape, student_outputs_shape
        )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        def pair_loss(m, i, f_t, f_s):
            size = self.pair_sizes[m][i]
            a_t = spatial_attention(f_t, size)
            a_s = spatial_attention(f_s, size)
            return ops.mean(ops.square(a_s - a_t), axis=-1)

        return self.sum_over_pairs(
            teacher_outputs, student_outputs, teacher_weights, pair_loss
        )
