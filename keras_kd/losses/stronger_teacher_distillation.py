import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import teacher_probabilities

#: Added to the product of the two norms in the correlation, as the
#: official `pearson_correlation(a, b, eps=1e-8)`.
EPSILON = 1e-8


def pearson_correlation(a, b, axis=-1, eps=EPSILON):
    """Pearson correlation of `a` and `b` along `axis`, in float32.

    The cosine of the centred vectors, `Σ a'b' / (‖a'‖·‖b'‖ + eps)`, as DIST's
    official code computes it (`eps` outside the square roots). A constant
    vector has correlation 0, with a finite (zero) gradient.

    Example:

    ```python
    rho = pearson_correlation(p_s, p_t)          # (batch,): per sample
    rho = pearson_correlation(p_s, p_t, axis=0)  # (classes,): per class
    ```
    """
    a = ops.cast(a, "float32")
    b = ops.cast(b, "float32")
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    dot = ops.sum(a * b, axis=axis)
    return dot / (_norm(a, axis) * _norm(b, axis) + eps)


def _norm(x, axis):
    """`‖x‖` along `axis`, with a zero (not NaN) gradient at 0."""
    square = ops.sum(ops.square(x), axis=axis)
    positive = square > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, square, 1.0)), 0.0)


@keras.saving.register_keras_serializable(package="keras_kd")
class StrongerTeacherDistillation(DistillationTerm):
    """DIST (Huang et al., NeurIPS 2022): match prediction relations, not
    the predictions.

    With `p = softmax(z / τ)` and `ρ` the Pearson correlation
    (`pearson_correlation`),

    - inter-class relation, per sample `i`: `β · τ² · (1 − ρ(p_s,i, p_t,i))`,
      the correlation over the classes of one sample's two predictions;
    - intra-class relation: `γ · τ² · (1 − mean_c ρ(p_s,:c, p_t,:c))`, each
      class's probabilities correlated over the samples of the batch;

    in float32, reported as `<name>_inter` and `<name>_intra`. The batch mean
    of the inter part plus the intra part is the official loss. The intra
    part is one batch-level value, given to every sample, so a `(batch,)`
    `sample_weight` weights the inter part per sample and scales the intra
    part by the weights' mean, but does not change which samples the class
    correlations use. With several teachers `p_t` is the
    weighted mean of their tempered distributions; a `kd.SoftLabelTeacher`'s
    rows are used as `p_t`. Sequence logits `(batch, length, classes)` are
    refused: the class correlations run over the batch, where padded tokens,
    which the term does not see, would count.

    Args:
        beta: weight `β` of the inter-class relation.
        gamma: weight `γ` of the intra-class relation.
        temperature: `τ` (official: 4 on CIFAR-100, 1 on ImageNet; see the
            `"dist"` preset).

    Example:

    ```python
    distiller = kd.Distiller(
        teacher, student, kd.losses.StrongerTeacherDistillation(temperature=4.0),
        distillation_loss_weights=[2.0], student_loss_weight=1.0,
        weighting="additive")
    ```
    """

    uses_logits = True
    component_names = ("inter", "intra")

    def __init__(self, beta=1.0, gamma=1.0, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        if beta < 0 or gamma < 0:
            raise ValueError(
                f"beta and gamma must be non-negative, got beta={beta}, gamma={gamma}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.temperature = float(temperature)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        shape = tuple(student_outputs_shape["logits"])
        if len(shape) != 2:
            raise ValueError(
                f"StrongerTeacherDistillation compares whole samples: its "
                f"intra-class relation correlates each class over the batch. "
                f"It needs logits (batch, classes), got shape {shape}. For "
                f"sequence logits use a term that gives one value per token "
                f"(e.g. kd.losses.LogitsDistillation)."
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        t = self.temperature
        p_t = sum(
            w * teacher_probabilities(out, t)
            for w, out in zip(teacher_weights, teacher_outputs)
        )
        z_s = ops.cast(student_outputs["logits"], "float32")
        p_s = ops.softmax(z_s / t, axis=-1)
        scale = t * t
        inter = self.beta * scale * (1.0 - pearson_correlation(p_s, p_t, axis=-1))
        intra = 1.0 - ops.mean(pearson_correlation(p_s, p_t, axis=0))
        return {
            "inter": inter,
            "intra": self.gamma * scale * intra * ops.ones_like(inter),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "beta": self.beta,
            "gamma": self.gamma,
            "temperature": self.temperature,
        }
