import keras

from keras_kd.losses.base import DistillationTerm


@keras.saving.register_keras_serializable(package="keras_kd")
class KerasDistillationLoss(DistillationTerm):
    """Runs a `keras.distillation` loss object inside `kd.Distiller`.

    Lets code written for `keras.distillation.Distiller` switch by changing
    the Distiller's import only; `kd.Distiller` wraps such losses
    automatically. Its value is computed by the wrapped object (so Keras'
    `LogitsDistillation` keeps Keras' semantics) against each teacher and
    averaged with the teacher weights.

    Example:

    ```python
    term = kd.losses.KerasDistillationLoss(
        keras.distillation.FeatureDistillation(
            teacher_layer_name="dense", student_layer_name="dense"))
    ```
    """

    uses_logits = True

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
            total = total + w * keras.ops.cast(
                self.wrapped.compute_loss(teacher, student), "float32"
            )
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "loss": keras.saving.serialize_keras_object(self.wrapped),
        }
