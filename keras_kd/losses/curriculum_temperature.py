import math

import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_standardizable
from keras_kd.losses.base import kl_divergence
from keras_kd.losses.base import standardize_logits


def gradient_reversal(x, strength):
    """Identity in the forward pass; the gradient is multiplied by
    `−strength` (Ganin & Lempitsky's reversal layer), on every backend.

    `stop_gradient((1 + λ)·x) − λ·x` has the value `x` and the derivative
    `−λ`.
    """
    return ops.stop_gradient((1.0 + strength) * x) - strength * x


@keras.saving.register_keras_serializable(package="keras_kd")
class CurriculumTemperatureDistillation(DistillationTerm):
    """CTKD (Li et al., AAAI 2023): KD with a learnable, adversarial
    temperature.

    Per sample (per token for sequence logits `(batch, length, classes)`)
    `T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))` (Hinton KD, in float32)
    with `T = t_min + t_scale · sigmoid(GRL_λ(θ))`. The term owns
    `θ` (trainable, optimised with the student); the gradient reversal
    layer makes `θ` *maximise* the loss, scaled by `λ`, while the student
    minimises it. `λ` follows a curriculum over epochs
    `i = epoch + 1` (CTKD counts from 1), clipped at `lambda_epochs`:

    - `"cosine"`: `λ = λ_0 + (λ_1 − λ_0) · (1 − cos(π·i/L)) / 2`;
    - `"linear"`: `λ = λ_0 + (λ_1 − λ_0) · min(i, L − 1) / L`.

    `mode="global"` (the default, and the only variant in the official
    code) learns one temperature; `mode="instance"` predicts one per
    sample (or token) with a 2-layer MLP on the concatenated teacher and
    student logits. `current_temperature()` reads the learned temperature.

    Args:
        mode: `"global"` or `"instance"`.
        t_min, t_scale: the range `(t_min, t_min + t_scale)` of `T`.
        initial_value: initial `θ` of the global variant (CTKD: 1.0, so
            `T₀ = 1 + 20·sigmoid(1) ≈ 15.6`).
        lambda_start, lambda_end, lambda_epochs: the curriculum of `λ`.
        schedule: `"cosine"` or `"linear"`.
        hidden_units: width of the instance-wise MLP.
        standardize: z-score both models' logits over the class axis
            first (logit standardization, Sun et al., CVPR 2024).

    Example:

    ```python
    distiller = kd.Distiller(
        teacher, student, kd.losses.CurriculumTemperatureDistillation(),
        distillation_loss_weights=[0.9], student_loss_weight=0.1,
        weighting="additive")
    ```
    """

    uses_logits = True
    reads_sequences = True

    def __init__(
        self,
        mode="global",
        t_min=1.0,
        t_scale=20.0,
        initial_value=1.0,
        lambda_start=0.0,
        lambda_end=1.0,
        lambda_epochs=10,
        schedule="cosine",
        hidden_units=256,
        standardize=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in ("global", "instance"):
            raise ValueError(f"mode must be 'global' or 'instance', got {mode!r}.")
        if schedule not in ("cosine", "linear"):
            raise ValueError(
                f"schedule must be 'cosine' or 'linear', got {schedule!r}."
            )
        if t_min <= 0 or t_scale <= 0:
            raise ValueError(
                f"t_min and t_scale must be positive, got t_min={t_min}, "
                f"t_scale={t_scale}."
            )
        if lambda_epochs < 1:
            raise ValueError(f"lambda_epochs must be at least 1, got {lambda_epochs}.")
        self.mode = mode
        self.t_min = float(t_min)
        self.t_scale = float(t_scale)
        self.initial_value = float(initial_value)
        self.lambda_start = float(lambda_start)
        self.lambda_end = float(lambda_end)
        self.lambda_epochs = int(lambda_epochs)
        self.schedule = schedule
        self.hidden_units = int(hidden_units)
        self.standardize = bool(standardize)
        self.epoch = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="epoch"
        )

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_standardizable(self, teacher_outputs_shape)
        if any("logits" not in shapes for shapes in teacher_outputs_shape):
            raise ValueError(
                "CurriculumTemperatureDistillation re-tempers the teacher's "
                "logits at the learned temperature; a kd.SoftLabelTeacher has "
                "fixed probabilities. Use a trained teacher model."
            )
        if self.mode == "global":
            self.theta = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(self.initial_value),
                name="theta",
            )
        else:
            *leading, classes = student_outputs_shape["logits"]
            self.mlp = keras.Sequential(
                [
                    keras.layers.Dense(self.hidden_units, activation="relu"),
                    keras.layers.Dense(1),
                ],
                name="temperature_mlp",
            )
            self.mlp.build((*leading, 2 * classes))  # (batch, [length,] 2C)

    def on_epoch_begin(self, epoch):
        self.epoch.assign(float(epoch))

    def reversal_strength(self):
        """`λ` of the current epoch, from the epoch variable."""
        i = ops.cast(self.epoch, "float32") + 1.0
        steps = float(self.lambda_epochs)
        if self.schedule == "cosine":
            progress = (1.0 - ops.cos(math.pi * ops.minimum(i, steps) / steps)) / 2
        else:
            progress = ops.minimum(i, steps - 1.0) / steps
        return self.lambda_start + (self.lambda_end - self.lambda_start) * progress

    def temperature(self, z_t, z_s):
        """`T` of the batch: shape `()` (global) or `(batch, [length,] 1)`
        (instance)."""
        if self.mode == "global":
            raw = ops.convert_to_tensor(self.theta)
        else:
            raw = self.mlp(ops.concatenate([z_t, z_s], axis=-1))
        raw = gradient_reversal(raw, self.reversal_strength())
        return self.t_min + self.t_scale * ops.sigmoid(raw)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        z_s = self._prepare(student_outputs["logits"])
        z_ts = [self._prepare(out["logits"]) for out in teacher_outputs]
        z_mean = sum(w * z for w, z in zip(teacher_weights, z_ts))
        t = self.temperature(ops.stop_gradient(z_mean), ops.stop_gradient(z_s))
        target = sum(
            w * ops.softmax(z / t, axis=-1) for w, z in zip(teacher_weights, z_ts)
        )
        kl = kl_divergence(target, ops.log_softmax(z_s / t, axis=-1))
        return (t * t if self.mode == "global" else ops.squeeze(t * t, -1)) * kl

    def current_temperature(self, teacher_logits=None, student_logits=None):
        """The global temperature now (or the instance temperatures of the
        given logits), for logging."""
        if self.mode == "global":
            return self.t_min + self.t_scale * ops.sigmoid(self.theta)
        return self.temperature(
            self._prepare(teacher_logits), self._prepare(student_logits)
        )

    def _prepare(self, logits):
        if self.standardize:
            return standardize_logits(logits)
        return ops.cast(logits, "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "t_min": self.t_min,
            "t_scale": self.t_scale,
            "initial_value": self.initial_value,
            "lambda_start": self.lambda_start,
            "lambda_end": self.lambda_end,
            "lambda_epochs": self.lambda_epochs,
            "schedule": self.schedule,
            "hidden_units": self.hidden_units,
            "standardize": self.standardize,
        }
