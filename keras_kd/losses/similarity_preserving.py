import keras
from keras import ops

from keras_kd.losses.base import check_batch_sizes
from keras_kd.losses.base import flat_features
from keras_kd.losses.base import l2_normalize
from keras_kd.losses.layer_pairs import LayerPairTerm


def similarity_matrix(f):
    """SP's `G = F·Fᵀ` of a `(batch, features)` matrix, rows L2-normalised."""
    gram = ops.matmul(f, ops.transpose(f))
    return l2_normalize(gram, axis=1)


@keras.saving.register_keras_serializable(package="keras_kd")
class SimilarityPreserving(LayerPairTerm):
    """SP (Tung & Mori, ICCV 2019): match the batch's similarity matrices.

    For each pair of layers, with `G` the row-L2-normalised Gram matrix
    `F·Fᵀ` of the batch's flattened features (`similarity_matrix`), the loss
    is `‖G_t − G_s‖²_F / b²`, summed over the pairs. A batch-level term: it
    returns a scalar (`sample_weight` does not apply to it). The Gram matrix
    is `b × b`, so the maps may differ in channels and spatial size; only
    the batch must be shared. With several teachers the loss is
    `Σ_m w_m · L(teacher m)`. The official weight of 3000 is the Distiller
    weight.

    Args:
        teacher_layer_names: teacher layer names (official: the last stage).
        student_layer_names: student layer names, paired in order.

    Example:

    ```python
    sp = kd.losses.SimilarityPreserving("stage3", "stage3")
    distiller = kd.Distiller(teacher, student, sp,
                             distillation_loss_weights=[3000.0],
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_batch_sizes(self, teacher_outputs_shape, student_outputs_shape)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        g_s = [
            similarity_matrix(flat_features(student_outputs, name))
            for name in self.student_layer_names
        ]
        total = 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            for name, g in zip(self.teacher_layer_names, g_s):
                g_t = similarity_matrix(flat_features(out, name))
                batch = ops.cast(ops.shape(g)[0], "float32")
                total = total + w * ops.sum(ops.square(g_t - g)) / (batch * batch)
        return total
