import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import sample_or_token_mean
from keras_kd.losses.keras_api import KerasLossAPI

_LOSSES = ("mse", "mae", "cosine")


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureDistillation(KerasLossAPI, DistillationTerm):
    """Distance between same-shape teacher and student features.

    The `keras.distillation.FeatureDistillation` counterpart: no trainable
    weights, so the two layers must have identical shapes (use
    `FeatureAlignment` otherwise). `None` names mean the final outputs.
    `loss` is `"mse"`, `"mae"` or `"cosine"` (1 − cosine similarity of the
    flattened features), per sample; sequence features `(batch, length,
    features)` give one value per token (cosine over the feature axis, as
    Keras' `"cosine_similarity"`). Like Keras' loss object it has
    `compute_loss(teacher_features, student_features)` (equal to Keras'
    for `"mse"` and `"mae"`), `validate_outputs` and
    `validate_model_compatibility`.

    Example:

    ```python
    term = kd.losses.FeatureDistillation("stage3", "stage3", loss="mse")
    ```
    """

    reads_sequences = True

    def __init__(
        self, teacher_layer_name=None, student_layer_name=None, loss="mse", **kwargs
    ):
        if loss not in _LOSSES:
            raise ValueError(
                f"Unknown loss '{loss}' for FeatureDistillation; use one of {_LOSSES}."
            )
        super().__init__(
            [teacher_layer_name or "logits"],
            [student_layer_name or "logits"],
            **kwargs,
        )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.loss = loss

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shape = tuple(student_outputs_shape[self.student_layer_names[0]])
        for shapes in teacher_outputs_shape:
            self._check_pair(tuple(shapes[self.teacher_layer_names[0]]), student_shape)

    def _check_pair(self, teacher_shape, student_shape):
        if teacher_shape[1:] != student_shape[1:]:
            raise ValueError(
                f"FeatureDistillation needs features of the same shape, "
                f"but teacher layer '{self.teacher_layer_names[0]}' has "
                f"shape {teacher_shape} and student layer "
                f"'{self.student_layer_names[0]}' has shape "
                f"{student_shape}. Use kd.losses.FeatureAlignment, which "
                f"learns a mapping between different shapes."
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        f_s = ops.cast(student_outputs[self.student_layer_names[0]], "float32")
        total = 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            f_t = ops.cast(out[self.teacher_layer_names[0]], "float32")
            total = total + w * self._distance(f_t, f_s)
        return total

    def _distance(self, f_t, f_s):
        sequence = len(f_s.shape) == 3
        if self.loss == "mse":
            return sample_or_token_mean(ops.square(f_s - f_t), sequence)
        if self.loss == "mae":
            return sample_or_token_mean(ops.abs(f_s - f_t), sequence)
        if not sequence:
            batch = ops.shape(f_s)[0]
            f_s, f_t = ops.reshape(f_s, (batch, -1)), ops.reshape(f_t, (batch, -1))
        f_s, f_t = ops.normalize(f_s, axis=-1), ops.normalize(f_t, axis=-1)
        return 1.0 - ops.sum(f_s * f_t, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "loss": self.loss,
        }
