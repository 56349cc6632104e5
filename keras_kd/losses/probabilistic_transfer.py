import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_batch_sizes
from keras_kd.losses.base import flat_features


def cosine_conditional_probabilities(f, eps=1e-7):
    """PKT's `p_{j|i}`: the cosine kernel `(cos(f_i, f_j) + 1) / 2` of a
    batch, each row divided by its sum.

    Rows are divided by `‖f_i‖ + eps` as in the official code; the norm is
    taken as `sqrt(max(‖f_i‖², 1e-24))` so an all-zero row has a finite
    gradient (its value, 0, is unchanged).
    """
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(f), axis=1, keepdims=True), 1e-24))
    f = f / (norm + eps)
    kernel = (ops.matmul(f, ops.transpose(f)) + 1.0) / 2.0
    return kernel / ops.sum(kernel, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_kd")
class ProbabilisticKnowledgeTransfer(DistillationTerm):
    """PKT (Passalis & Tefas, ECCV 2018): match the batch's similarity
    distributions.

    With `p_{j|i}` the row-normalised cosine kernel of the batch's features
    (`cosine_conditional_probabilities`), the loss is
    `mean_{i,j} p^t_{j|i} · log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))`, the
    official reduction (a mean over the `b²` entries). A batch-level term: it
    returns a scalar (`sample_weight` does not apply to it). With several
    teachers the loss is `Σ_m w_m · L(teacher m)`. Teacher and student
    features may differ in size.

    Args:
        teacher_layer_name, student_layer_name: the features compared
            (official: the pooled penultimate feature; flattened per sample).
        eps: the official 1e-7, in the norms and inside the logarithm.

    Example:

    ```python
    pkt = kd.losses.ProbabilisticKnowledgeTransfer("features", "features")
    distiller = kd.Distiller(teacher, student, pkt,
                             distillation_loss_weights=[30000.0],
                             weighting="additive", student_loss_weight=1.0)
    ```
    """

    def __init__(
        self,
        teacher_layer_name="features",
        student_layer_name="features",
        eps=1e-7,
        **kwargs,
    ):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.eps = float(eps)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_batch_sizes(self, teacher_outputs_shape, student_outputs_shape)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        eps = self.eps
        p_s = cosine_conditional_probabilities(
            flat_features(student_outputs, self.student_layer_name), eps
        )
        total = 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            p_t = cosine_conditional_probabilities(
                flat_features(out, self.teacher_layer_name), eps
            )
            kl = p_t * ops.log((p_t + eps) / (p_s + eps))
            total = total + w * ops.mean(kl)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "eps": self.eps,
        }
