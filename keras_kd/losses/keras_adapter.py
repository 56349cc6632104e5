import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import sample_or_token_mean


@keras.saving.register_keras_serializable(package="keras_kd")
class KerasDistillationLoss(DistillationTerm):
    """Runs a `keras.distillation` loss object inside `kd.Distiller`.

    Lets code written for `keras.distillation.Distiller` switch by changing
    the Distiller's import only; `kd.Distiller` wraps such losses
    automatically. Its value follows the wrapped object (so Keras'
    `LogitsDistillation` keeps Keras' semantics) against each teacher,
    averaged with the teacher weights. For Keras' own `LogitsDistillation`
    and `FeatureDistillation` with one loss (a function, or a loss object
    with a mean reduction) it is one value per sample, or per token of
    sequence outputs `(batch, length, ...)`, whose mean is the object's
    `compute_loss`, so `sample_weight` applies (a padding mask: the mean
    over real tokens). Any other object gives its `compute_loss`, a batch
    scalar that `sample_weight` does not weigh; per-token weights raise.

    Example:

    ```python
    term = kd.losses.KerasDistillationLoss(
        keras.distillation.FeatureDistillation(
            teacher_layer_name="dense", student_layer_name="dense"))
    ```
    """

    uses_logits = True
    reads_sequences = True

    def __init__(self, loss, **kwargs):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        teacher_name = getattr(loss, "teacher_layer_name", None) or "logits"
        student_name = getattr(loss, "student_layer_name", None) or "logits"
        super().__init__([teacher_name], [student_name], **kwargs)
        self.uses_logits = teacher_name == "logits"
        self.wrapped = loss

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        student = student_outputs[self.student_layer_names[0]]
        total = 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            teacher = out[self.teacher_layer_names[0]]
            self.wrapped.validate_outputs(teacher, student)
            total = total + w * self._value(teacher, student)
        return total

    def _value(self, teacher, student):
        """Keras' `apply_loss` without its batch mean where it is known."""
        fn = _unreduced_loss(self.wrapped)
        if fn is None:
            return ops.cast(self.wrapped.compute_loss(teacher, student), "float32")
        teacher, student = ops.cast(teacher, "float32"), ops.cast(student, "float32")
        scale = 1.0
        if isinstance(self.wrapped, keras.distillation.LogitsDistillation):
            t = self.wrapped.temperature
            teacher, student = teacher / t, student / t
            if isinstance(self.wrapped.loss, keras.losses.KLDivergence):
                teacher = ops.softmax(teacher, axis=-1)
                student = ops.softmax(student, axis=-1)
                scale = t * t
        value = fn(teacher, student)
        return scale * sample_or_token_mean(value, len(teacher.shape) == 3)

    def get_config(self):
        return {
            **super().get_config(),
            "loss": keras.saving.serialize_keras_object(self.wrapped),
        }


def _unreduced_loss(wrapped):
    """The per-sample function of Keras' own distillation losses with one
    loss whose batch mean is their `compute_loss`, else `None`."""
    distillation = getattr(keras, "distillation", None)
    own = (
        ()
        if distillation is None
        else (distillation.LogitsDistillation, distillation.FeatureDistillation)
    )
    loss = getattr(wrapped, "loss", None)
    if type(wrapped) not in own or not callable(loss):
        return None
    if isinstance(loss, keras.losses.Loss):
        mean = ("sum_over_batch_size", "mean", "mean_with_sample_weight")
        return loss.call if loss.reduction in mean else None
    return loss
