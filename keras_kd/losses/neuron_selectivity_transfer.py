import keras
from keras import ops

from keras_kd.losses.attention_transfer import adaptive_pool_matrix
from keras_kd.losses.base import check_batch_sizes
from keras_kd.losses.base import l2_normalize
from keras_kd.losses.layer_pairs import LayerPairTerm


def selectivity_maps(feature, size):
    """`(batch, H·W, C)`: each channel's spatial map, L2-normalised.

    An NHWC map larger than `size` is first adaptive-average-pooled to it.
    """
    f = ops.cast(feature, "float32")
    height, width = f.shape[1:3]
    if tuple(size) != (height, width):
        rows = adaptive_pool_matrix(height, size[0])
        cols = adaptive_pool_matrix(width, size[1])
        f = ops.einsum("ih,bhwc,jw->bijc", rows, f, cols)
    f = ops.reshape(f, (ops.shape(f)[0], size[0] * size[1], f.shape[-1]))
    return l2_normalize(f, axis=1)


def _mean_poly_kernel(a, b):
    """Per sample, the mean of `(a_iᵀ b_j)²` over channel pairs (i, j)."""
    return ops.mean(ops.square(ops.einsum("bpi,bpj->bij", a, b)), axis=(1, 2))


@keras.saving.register_keras_serializable(package="keras_kd")
class NeuronSelectivityTransfer(LayerPairTerm):
    """NST (Huang & Wang, 2017): MMD between channel-activation distributions.

    Each channel's spatial map, flattened and L2-normalised, is one sample
    of a distribution; per image, the squared MMD with the polynomial kernel
    `k(x, y) = (xᵀy)²` (d = 2, c = 0) is
    `mean k(t, t') + mean k(s, s') − 2 mean k(s, t)` over the channel
    pairs, summed over the layer pairs. The loss is per sample (its batch
    mean is the official value). Channel counts may differ; when the
    spatial sizes differ the larger map is adaptive-average-pooled to the
    smaller one, as in the official code. With several teachers the loss is
    `Σ_m w_m · L(teacher m)`. The official weight of 50 is the Distiller
    weight.

    Args:
        teacher_layer_names: teacher layer names (NHWC maps; official: each
            stage's output).
        student_layer_names: student layer names, paired in order.

    Example:

    ```python
    nst = kd.losses.NeuronSelectivityTransfer(
        ["stage1", "stage2", "stage3"], ["stage1", "stage2", "stage3"])
    distiller = kd.Distiller(teacher, student, nst,
                             distillation_loss_weights=[50.0],
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_batch_sizes(self, teacher_outputs_shape, student_outputs_shape)
        # Per teacher, per pair: the common H×W both maps are pooled to.
        self.pair_sizes = self.common_map_sizes(
            teacher_outputs_shape, student_outputs_shape
        )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        def pair_loss(m, i, f_t, f_s):
            size = self.pair_sizes[m][i]
            t = selectivity_maps(f_t, size)
            s = selectivity_maps(f_s, size)
            return (
                _mean_poly_kernel(t, t)
                + _mean_poly_kernel(s, s)
                - 2.0 * _mean_poly_kernel(s, t)
            )

        return self.sum_over_pairs(
            teacher_outputs, student_outputs, teacher_weights, pair_loss
        )
