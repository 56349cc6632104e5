import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_standardizable
from keras_kd.losses.base import class_indices
from keras_kd.losses.base import kl_divergence
from keras_kd.losses.base import standardize_logits


@keras.saving.register_keras_serializable(package="keras_kd")
class DecoupledDistillation(DistillationTerm):
    """DKD (Zhao et al., CVPR 2022): target-class plus non-target-class KD.

    With `p = softmax(z / T)` and `g` the sample's label, per sample

    - TCKD: `T² · KL([p_t,g, 1 − p_t,g] ‖ [p_s,g, 1 − p_s,g])`;
    - NCKD: `T² · KL(p̂_t ‖ p̂_s)`, `p̂` the softmax over the classes other
      than `g` (`p` with class `g` removed and renormalised);
    - loss: `min((epoch + 1) / warmup_epochs, 1) · (α · TCKD + β · NCKD)`,

    in float32. `epoch` is the 0-based Keras epoch of `Distiller.fit`
    (mdistiller counts from 1, so the first epoch has weight `1/warmup`);
    it lives in a non-trainable variable, so a resumed
    `fit(initial_epoch=...)` continues the warm-up. The parts are reported
    as `<name>_tckd` and `<name>_nckd` (warm-up included). With several
    teachers both targets are the teachers' weighted means; a
    `kd.SoftLabelTeacher`'s rows are used as `p_t`. Sequence logits
    `(batch, length, classes)` with labels `(batch, length)` give one value
    per token (`kd.Distiller` averages them over the real tokens of a
    padding-mask `sample_weight`); labels of another shape raise.

    Args:
        alpha: weight `α` of TCKD.
        beta: weight `β` of NCKD (mdistiller's CIFAR-100 configs use 8, 6
            or 2 by pair; see the `"dkd"` preset).
        temperature: `T`.
        warmup_epochs: epochs of the linear warm-up (0: none).
        standardize: z-score both models' logits over the class axis
            before the temperature (logit standardization, Sun et al.,
            CVPR 2024).

    Example:

    ```python
    distiller = kd.Distiller(
        teacher, student, kd.losses.DecoupledDistillation(beta=8.0),
        student_loss_weight=1.0, weighting="additive")
    ```
    """

    uses_logits = True
    reads_sequences = True
    component_names = ("tckd", "nckd")

    def __init__(
        self,
        alpha=1.0,
        beta=8.0,
        temperature=4.0,
        warmup_epochs=20,
        standardize=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if alpha < 0 or beta < 0:
            raise ValueError(
                f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        if warmup_epochs < 0 or int(warmup_epochs) != warmup_epochs:
            raise ValueError(
                f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}."
            )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.warmup_epochs = int(warmup_epochs)
        self.standardize = bool(standardize)
        self.epoch = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="epoch"
        )

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_standardizable(self, teacher_outputs_shape)

    def on_epoch_begin(self, epoch):
        self.epoch.assign(float(epoch))

    def warmup_factor(self):
        """`min((epoch + 1) / warmup_epochs, 1)`, read from the variable."""
        if self.warmup_epochs == 0:
            return ops.ones((), "float32")
        return ops.minimum(
            (ops.cast(self.epoch, "float32") + 1.0) / self.warmup_epochs, 1.0
        )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        if labels is None:
            raise ValueError(
                "DecoupledDistillation needs the labels; give `y` to fit()."
            )
        t = self.temperature
        z_s = self._prepare(student_outputs["logits"])
        # Boolean `(batch, [length,] classes)` mask of each label.
        indices = class_indices(labels, z_s.shape, "DecoupledDistillation")
        gt = ops.one_hot(indices, ops.shape(z_s)[-1]) > 0.5
        # Student: log p_g and log(1 − p_g) from log-sum-exps (stable where
        # p_g saturates), and the non-target log-softmax.
        log_all = ops.logsumexp(z_s / t, axis=-1)
        log_other_s = ops.logsumexp(ops.where(gt, -1e9, z_s / t), axis=-1)
        log_gt_s = ops.sum(ops.where(gt, z_s / t, 0.0), axis=-1) - log_all
        log_binary_s = ops.stack([log_gt_s, log_other_s - log_all], axis=-1)
        log_hat_s = ops.log_softmax(ops.where(gt, -1e9, z_s / t), axis=-1)

        binary_t, hat_t = 0.0, 0.0
        for w, out in zip(teacher_weights, teacher_outputs):
            b, h = self._teacher_targets(out, gt)
            binary_t, hat_t = binary_t + w * b, hat_t + w * h
        scale = (t * t) * self.warmup_factor()
        return {
            "tckd": self.alpha * scale * kl_divergence(binary_t, log_binary_s),
            "nckd": self.beta * scale * kl_divergence(hat_t, log_hat_s),
        }

    def _prepare(self, logits):
        if self.standardize:
            return standardize_logits(logits)
        return ops.cast(logits, "float32")

    def _teacher_targets(self, output, gt):
        """`([p_g, 1 − p_g], p̂)` of one teacher."""
        if "probabilities" in output:
            p = ops.cast(output["probabilities"], "float32")
            p_gt = ops.sum(ops.where(gt, p, 0.0), axis=-1)
            other = ops.where(gt, 0.0, p)
            total = ops.sum(other, axis=-1, keepdims=True)
            hat = other / ops.maximum(total, 1e-30)
            return ops.stack([p_gt, 1.0 - p_gt], axis=-1), hat
        z = self._prepare(output["logits"]) / self.temperature
        p = ops.softmax(z, axis=-1)
        p_gt = ops.sum(ops.where(gt, p, 0.0), axis=-1)
        hat = ops.softmax(ops.where(gt, -1e9, z), axis=-1)
        return ops.stack([p_gt, 1.0 - p_gt], axis=-1), hat

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "warmup_epochs": self.warmup_epochs,
            "standardize": self.standardize,
        }
