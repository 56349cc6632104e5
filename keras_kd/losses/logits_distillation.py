import keras

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_standardizable
from keras_kd.losses.base import standardize_logits
from keras_kd.losses.base import teacher_probabilities
from keras_kd.losses.base import tempered_kl
from keras_kd.losses.keras_api import KerasLossAPI


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(KerasLossAPI, DistillationTerm):
    """Hinton KD: `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))` per sample.

    Computed in float32 whatever the models' dtype policy. With several
    teachers the target is the weighted mean of their tempered
    probabilities; a `kd.SoftLabelTeacher` supplies its table rows as the
    target directly (not re-tempered).

    Unlike `keras.distillation.LogitsDistillation()` with its default
    arguments, this is exactly the published formula. Like Keras' loss
    object it has `compute_loss(teacher_logits, student_logits)` (the
    batch mean of `T² · KL`), `validate_outputs` and
    `validate_model_compatibility`.

    With `standardize=True` (logit standardization, Sun et al., CVPR 2024)
    teacher and student logits are z-scored per sample
    (`kd.losses.base.standardize_logits`) before the temperature; the
    official CIFAR-100 setting is `temperature=2` with weight 9
    (preset `"kd+ls"`). A label teacher's probabilities cannot be
    standardized; that combination raises at build time.

    Example:

    ```python
    distiller = kd.Distiller(teacher, student,
                             kd.losses.LogitsDistillation(temperature=4.0),
                             student_loss_weight=0.1)
    ```
    """

    uses_logits = True

    def __init__(self, temperature=4.0, standardize=False, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_standardizable(self, teacher_outputs_shape)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        t = self.temperature
        if self.standardize:
            teacher_outputs = [
                {"logits": standardize_logits(out["logits"])} for out in teacher_outputs
            ]
            student_outputs = {"logits": standardize_logits(student_outputs["logits"])}
        target = sum(
            w * teacher_probabilities(out, t)
            for w, out in zip(teacher_weights, teacher_outputs)
        )
        return tempered_kl(target, student_outputs, t)

    def _check_pair(self, teacher_shape, student_shape):
        if teacher_shape[-1] != student_shape[-1]:
            raise ValueError(
                f"LogitsDistillation compares class scores, but the teacher "
                f"has {teacher_shape[-1]} classes and the student "
                f"{student_shape[-1]}. Use feature terms (e.g. "
                f"kd.losses.FeatureAlignment) when the label spaces differ."
            )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "standardize": self.standardize,
        }
