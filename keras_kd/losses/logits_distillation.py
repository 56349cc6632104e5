import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_standardizable
from keras_kd.losses.base import standardize_logits
from keras_kd.losses.base import teacher_probabilities
from keras_kd.losses.base import tempered_kl
from keras_kd.losses.divergences import check_divergence
from keras_kd.losses.divergences import generalized_jsd
from keras_kd.losses.divergences import reverse_kl
from keras_kd.losses.divergences import teacher_log_probabilities
from keras_kd.losses.keras_api import KerasLossAPI


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(KerasLossAPI, DistillationTerm):
    """Hinton KD: `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))` per sample;
    reverse KL or GKD's generalized JSD with `divergence`.

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

    `divergence` picks the divergence between `p_t = softmax(z_t/T)` and
    `p_s = softmax(z_s/T)` (GKD, Agarwal et al., ICLR 2024, as in TRL's
    `GKDTrainer.generalized_jsd_loss`), each times `T²` and per sample or
    per token:

    - `"kl"` (default): `KL(p_t ‖ p_s)`, the formula above.
    - `"reverse_kl"`: `KL(p_s ‖ p_t)` (mode-seeking).
    - `"jsd"`: `β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)` with
      `m = β·p_t + (1−β)·p_s`, in log space (`log m` by `logsumexp`).
      `beta` is the teacher's share of `m`, TRL's `beta`: `beta=0` is the
      forward KL `KL(p_t ‖ p_s)` and `beta=1` the reverse KL
      `KL(p_s ‖ p_t)`, as TRL defines the ends (the mixture formula itself
      tends to 0 there, like `β·KL(p_t ‖ p_s)` and `(1−β)·KL(p_s ‖ p_t)`).

    All three are times `T²` (TRL's loss has no `T²` and its trainer uses
    `T = 1`, where the values agree), so `T` means what it means for
    `"kl"` (docs/methods.md §12). With several teachers `p_t` is their
    weighted mixture; a label teacher's probabilities are used as given, a
    0 read as 1.2e-38 in the logs. `divergence` replaces the KL only: a
    non-KL `loss` (e.g. `"mse"`) with a `divergence` other than `"kl"`
    raises a ValueError. `beta` is read by `"jsd"` only.

    Example:

    ```python
    distiller = kd.Distiller(teacher, student,
                             kd.losses.LogitsDistillation(temperature=4.0),
                             student_loss_weight=0.1)
    mse_kd = kd.losses.LogitsDistillation(temperature=2.0, loss="mse")
    gkd = kd.losses.LogitsDistillation(1.0, divergence="jsd", beta=0.5)
    ```
    """

    uses_logits = True
    reads_sequences = True

    def __init__(
        self,
        temperature=4.0,
        loss="kl_divergence",
        standardize=False,
        divergence="kl",
        beta=0.5,
        **kwargs,
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
        check_divergence(divergence, beta, self._loss_fn is None, loss)
        self.divergence = divergence
        self.beta = float(beta)

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
        forward = self.divergence == "kl" or (
            self.divergence == "jsd" and self.beta == 0.0
        )
        if forward:
            target = sum(
                w * teacher_probabilities(out, t)
                for w, out in zip(teacher_weights, teacher_outputs)
            )
            return tempered_kl(target, student_outputs, t)
        log_p_t = teacher_log_probabilities(teacher_outputs, teacher_weights, t)
        log_p_s = ops.log_softmax(_tempered(student_outputs, t), axis=-1)
        if self.divergence == "reverse_kl" or self.beta == 1.0:
            return (t * t) * reverse_kl(log_p_t, log_p_s)
        return (t * t) * generalized_jsd(log_p_t, log_p_s, self.beta)

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
            "divergence": self.divergence,
            "beta": self.beta,
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
