import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_batch_sizes
from keras_kd.losses.base import flat_features
from keras_kd.losses.base import l2_normalize


def pairwise_distances(e, squared=False, eps=1e-12):
    """`(batch, batch)` Euclidean distances of the rows of `e`, diagonal 0.

    Squared distances are clamped below at `eps` before the square root, as
    in the official RKD code, so the gradient stays finite for equal rows.
    """
    square = ops.sum(ops.square(e), axis=1)
    d = square[:, None] + square[None, :] - 2.0 * ops.matmul(e, ops.transpose(e))
    d = ops.maximum(d, eps)
    if not squared:
        d = ops.sqrt(d)
    index = ops.arange(ops.shape(e)[0])
    return ops.where(index[:, None] == index[None, :], 0.0, d)


def _normalised_distances(e, squared, eps):
    """Distances divided by their mean over the non-zero (off-diagonal) pairs."""
    d = pairwise_distances(e, squared, eps)
    positive = d > 0
    count = ops.sum(ops.cast(positive, "float32"))
    mean = ops.sum(ops.where(positive, d, 0.0)) / ops.maximum(count, 1.0)
    return d / ops.where(mean > 0, mean, 1.0)


def _angles(e):
    """`(batch, batch, batch)` cosines of the angle at vertex i of (j, i, k)."""
    diff = e[None, :, :] - e[:, None, :]
    unit = l2_normalize(diff, axis=-1)
    return ops.einsum("ijd,ikd->ijk", unit, unit)


def _smooth_l1(x, y):
    """Mean Huber loss (PyTorch's `smooth_l1_loss`, beta 1) over all entries."""
    diff = ops.abs(x - y)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


@keras.saving.register_keras_serializable(package="keras_kd")
class RelationalKnowledgeDistillation(DistillationTerm):
    """RKD (Park et al., CVPR 2019): distance and angle relations of a batch.

    On the flattened features `e` (the pooled penultimate feature by
    default) of a batch, with `ψ_D(i, j) = ‖e_i − e_j‖ / μ` (μ the mean over
    the non-zero pairs) and `ψ_A(i, j, k)` the cosine of the angle at `e_i`
    between `e_j` and `e_k`:
    `distance_weight · huber(ψ_D^s, ψ_D^t) + angle_weight · huber(ψ_A^s, ψ_A^t)`,
    Huber (smooth-L1) averaged over all `b²` and `b³` entries. A batch-level
    term: it returns a scalar (`sample_weight` does not apply to it), and its
    two parts are reported as the metrics `<name>_distance` and
    `<name>_angle`. With several teachers the loss is `Σ_m w_m · L(teacher m)`.
    Teacher and student features may differ in size.

    Args:
        teacher_layer_name, student_layer_name: the features compared
            (any rank; flattened per sample).
        distance_weight, angle_weight: the weights of the two parts
            (official 25 and 50).
        squared: compare squared distances (official default False).
        eps: the lower clamp of the squared distances (official 1e-12).

    Example:

    ```python
    rkd = kd.losses.RelationalKnowledgeDistillation("features", "features")
    distiller = kd.Distiller(teacher, student, rkd, weighting="additive",
                             student_loss_weight=1.0)
    ```
    """

    component_names = ("distance", "angle")

    def __init__(
        self,
        teacher_layer_name="features",
        student_layer_name="features",
        distance_weight=25.0,
        angle_weight=50.0,
        squared=False,
        eps=1e-12,
        **kwargs,
    ):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                f"distance_weight and angle_weight must be >= 0, got "
                f"{distance_weight} and {angle_weight}."
            )
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.squared = bool(squared)
        self.eps = float(eps)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_batch_sizes(self, teacher_outputs_shape, student_outputs_shape)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        e_s = flat_features(student_outputs, self.student_layer_name)
        d_s = _normalised_distances(e_s, self.squared, self.eps)
        a_s = _angles(e_s)
        distance = angle = 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            e_t = flat_features(out, self.teacher_layer_name)
            d_t = _normalised_distances(e_t, self.squared, self.eps)
            distance = distance + w * _smooth_l1(d_s, d_t)
            angle = angle + w * _smooth_l1(a_s, _angles(e_t))
        return {
            "distance": self.distance_weight * distance,
            "angle": self.angle_weight * angle,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
            "squared": self.squared,
            "eps": self.eps,
        }
