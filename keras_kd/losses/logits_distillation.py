import keras
from keras import ops

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
    target directly (not re-tempered). Sequence logits `(batch, length,
    classes)` give one value per token, which `kd.Distiller` averages over
    the real tokens of a `(batch, length)` `sample_weight` (see
    `kd.losses.base.weighted_mean`).

    `loss` is `keras.distillation.LogitsDistillation`'s argument: a Keras
    loss name, object or function. `"kl_divergence"` (the default, any of
    its aliases) and `keras.losses.KLDivergence()` give the exact formula
    above (Keras' object computes the same for the instance; for the
    string, Keras reads the tempered logits as probabilities). Any other
    loss is `loss(z_t / T, z_s / T)` per sample, without `T²`, as in
    Keras (e.g. `"mse"`: tempered logit matching), averaged over teachers
    with their weights; it needs teacher logits, so not a label teacher.

    Like Keras' loss object it has `compute_loss(teacher_logits,
    student_logits, sample_weight=None)` (the batch mean),
    `validate_outputs` and `validate_model_compatibility`.

    With `standardize=True` (logit standardization, Sun et al., CVPR 2024)
    teacher and student logits are z-scored over the class axis, per sample
    or per token (`kd.losses.base.standardize_logits`) before the
    temperature; the
    official CIFAR-100 setting is `temperature=2` with weight 9
    (preset `"kd+ls"`). A label teacher's probabilities cannot be
    standardized; that combination raises at build time.

    Example:

    ```python
    distiller = kd.Distiller(teacher, student,
                             kd.losses.LogitsDistillation(temperature=4.0),
                             student_loss_weight=0.1)
    mse_kd = kd.losses.LogitsDistillation(temperature=2.0, loss="mse")
    ```
    """

    uses_logits = True
    reads_sequences = True

    def __init__(
        self, temperature=4.0, loss="kl_divergence", standardize=False, **kwargs
    ):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.standardize = bool(standardize)
        if isinstance(loss, dict):
            loss = keras.losses.deserialize(loss)
        self.loss = loss
        self._loss_fn = _resolve_loss(loss)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_standardizable(self, teacher_outputs_shape)
        if self._loss_fn is not None and any(
            "probabilities" in shapes for shapes in teacher_outputs_shape
        ):
            raise ValueError(
                f"LogitsDistillation(loss={self.loss!r}) compares tempered "
                f"logits, but a kd.SoftLabelTeacher gives probabilities. "
                f"Use loss='kl_divergence' with a label teacher."
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        t = self.temperature
        if self.standardize:
            teacher_outputs = [
                {"logits": standardize_logits(out["logits"])} for out in teacher_outputs
            ]
            student_outputs = {"logits": standardize_logits(student_outputs["logits"])}
        if self._loss_fn is not None:
            z_s = _tempered(student_outputs, t)
            return sum(
                w * ops.cast(self._loss_fn(_tempered(out, t), z_s), "float32")
                for w, out in zip(teacher_weights, teacher_outputs)
            )
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
        loss = self.loss
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "loss": loss if isinstance(loss, str) else keras.losses.serialize(loss),
            "standardize": self.standardize,
        }


def _resolve_loss(loss):
    """`None` for KL (the exact formula), else the per-sample loss function
    (a `keras.losses.Loss`'s unreduced `call`)."""
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if fn is None or not callable(fn):
        raise ValueError(
            f"loss must be a Keras loss name, object or function, got {loss!r}."
        )
    # A deserialized `KLDivergence()` is a wrapper of the same function.
    if getattr(fn, "fn", fn) is keras.losses.kl_divergence:
        return None
    if isinstance(fn, keras.losses.Loss):
        return fn.call
    return fn


def _tempered(outputs, temperature):
    return ops.cast(outputs["logits"], "float32") / temperature
