import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.data.augment import RandomPaddedCrop
from keras_kd.data.rand_augment import RandAugmentCutout
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import class_indices
from keras_kd.losses.base import kl_divergence
from keras_kd.losses.base import standardize_logits

_VIEWS = ("weak", "strong")


def percentile(values, q):
    """`np.percentile(values, q)` (linear interpolation) of a 1-D tensor."""
    values = ops.sort(ops.reshape(ops.cast(values, "float32"), (-1,)))
    count = ops.shape(values)[0]
    position = (q / 100.0) * (ops.cast(count, "float32") - 1.0)
    lower = ops.floor(position)
    low = ops.cast(lower, "int32")
    high = ops.minimum(low + 1, count - 1)
    low_value, high_value = ops.take(values, low), ops.take(values, high)
    return low_value + (position - lower) * (high_value - low_value)


def fraction_at_most(values, q):
    """The fraction of `values` at or below their `q`-th percentile."""
    threshold = percentile(values, q)
    return ops.mean(ops.cast(ops.reshape(values, (-1,)) <= threshold, "float32"))


def instance_kd(z_s, z_t, temperature):
    """`T² · mean_batch KL(softmax(z_t/T) ‖ softmax(z_s/T))`, a scalar."""
    t = temperature
    target = ops.softmax(z_t / t, axis=-1)
    kl = kl_divergence(target, ops.log_softmax(z_s / t, axis=-1))
    return (t * t) * ops.mean(kl)


def class_relation(z_s, z_t, temperature):
    """`Σ (P_tᵀP_t − P_sᵀP_s)² / C`, `P = softmax(z/T)` (batch, C)."""
    p_s = ops.softmax(z_s / temperature, axis=-1)
    p_t = ops.softmax(z_t / temperature, axis=-1)
    gap = ops.matmul(ops.transpose(p_t), p_t) - ops.matmul(ops.transpose(p_s), p_s)
    return ops.sum(ops.square(gap)) / ops.cast(ops.shape(p_s)[-1], "float32")


def batch_relation(z_s, z_t, temperature):
    """`Σ (P_t P_tᵀ − P_s P_sᵀ)² / B`, `P = softmax(z/T)` (batch, C)."""
    p_s = ops.softmax(z_s / temperature, axis=-1)
    p_t = ops.softmax(z_t / temperature, axis=-1)
    gap = ops.matmul(p_t, ops.transpose(p_t)) - ops.matmul(p_s, ops.transpose(p_s))
    return ops.sum(ops.square(gap)) / ops.cast(ops.shape(p_s)[0], "float32")


@keras.saving.register_keras_serializable(package="keras_kd")
class MultiLevelLogitDistillation(DistillationTerm):
    """MLKD (Jin, Wang, Lin, CVPR 2023): multi-level logit distillation.

    As the official code computes it (Jin-Ying/Multi-Level-Logit-
    Distillation, `mdistiller/distillers/KD_ours.py`). Each image gives a
    weak view (the original; with `crop_padding`, flipped and cropped) and
    a strong one (the same, then `kd.data.RandAugmentCutout`), made inside
    the step by `transform_inputs`; both networks see both views, the
    Distiller's supervised loss the weak one. With `w`/`s` the weak/strong
    logits, `T` over `temperatures`, `KD_T` the batch-mean `T²·KL`, and
    `CC_T`, `BC_T` the squared gaps of the class (`PᵀP`, / C) and batch
    (`PPᵀ`, / B) Gram matrices of `P = softmax(z/T)`:

    - `ρ_s`, `ρ_c`: the fractions of samples (teacher max probability on
      `w`) and of classes (teacher probability summed over the batch) at
      or below their `percentile`. The official code multiplies each
      batch-mean loss by such a mask and averages it, so the mask scales
      the loss (by about ½) rather than selecting samples.
    - `instance = λ · (ρ_s · Σ_T KD_T(w) + Σ_T KD_T(v_T))`, `v_T` the view
      `strong_kd_views` names for `T` (officially the strong view for the
      first three temperatures and the weak one for 2 and 6);
    - `class = λ · ρ_c · Σ_T CC_T(w)`; `batch = λ · ρ_s · Σ_T BC_T(w)`
      (the official code computes them on the strong view too, unused);
    - `ce_strong = ce_weight · CE(s, y)` (the weak view's CE is the
      Distiller's student loss).

    `call` returns these weighted parts (reported as `<name>_<part>`);
    they are batch-level scalars, so `sample_weight` does not apply. Use
    it with `weighting="additive"`, `student_loss_weight=ce_weight` and a
    term weight of 1 (the `"mlkd"` preset). One teacher model; per-sample
    logits `(batch, classes)` only.

    Args:
        temperatures: the temperatures (official: the config's T, then 3,
            5, 2, 6).
        strong_kd_views: for each temperature, `"strong"` or `"weak"`: the
            view of the unmasked KD sum.
        kd_weight: `λ`, the weight of the three logit levels (0.9).
        ce_weight: weight of the strong view's cross-entropy (0.1).
        percentile: the confidence threshold's percentile (50).
        standardize: z-score the logits of the KD parts (logit
            standardization, Sun et al., CVPR 2024, `"mlkd+ls"`); the
            relations and the confidences read the raw logits.
        strong_augment: apply `RandAugmentCutout` to the strong view.
        crop_padding: with a positive value, `transform_inputs` flips and
            crops each view on its own in training as the official
            pipeline (`RandomCrop(32, padding=4)`, horizontal flip); give
            the Distiller no other augmentation then. 0: none here.
        mean, std: the inputs' normalisation `(pixels − mean) / std` of
            8-bit pixels (scalars or per channel), for the strong
            augmentation and the black crop padding.
        seed: seed of the views' random draws (None: unseeded).

    Example:

    ```python
    mean, std = kd.data.channel_stats(x)  # x: uint8 images.
    mlkd = kd.losses.MultiLevelLogitDistillation(
        crop_padding=4, mean=mean, std=std)
    distiller = kd.Distiller(
        teacher, student, mlkd, student_loss_weight=0.1,
        weighting="additive")
    ```
    """

    uses_logits = True
    num_views = 2
    component_names = ("instance", "class", "batch", "ce_strong")

    def __init__(
        self,
        temperatures=(4.0, 3.0, 5.0, 2.0, 6.0),
        strong_kd_views=("strong", "strong", "strong", "weak", "weak"),
        kd_weight=0.9,
        ce_weight=0.1,
        percentile=50.0,
        standardize=False,
        strong_augment=True,
        crop_padding=0,
        mean=0.0,
        std=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        temperatures = [float(t) for t in temperatures]
        if not temperatures or min(temperatures) <= 0:
            raise ValueError(
                f"temperatures must be a non-empty list of positive values, "
                f"got {temperatures}."
            )
        strong_kd_views = [str(v) for v in strong_kd_views]
        if len(strong_kd_views) != len(temperatures) or not set(strong_kd_views) <= set(
            _VIEWS
        ):
            raise ValueError(
                f"strong_kd_views must give 'strong' or 'weak' for each of "
                f"the {len(temperatures)} temperatures, got {strong_kd_views}."
            )
        if kd_weight < 0 or ce_weight < 0:
            raise ValueError(
                f"kd_weight and ce_weight must be non-negative, got "
                f"{kd_weight}, {ce_weight}."
            )
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}.")
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(
                f"crop_padding must be a non-negative integer (pixels), got "
                f"{crop_padding}."
            )
        self.temperatures = temperatures
        self.strong_kd_views = strong_kd_views
        self.kd_weight = float(kd_weight)
        self.ce_weight = float(ce_weight)
        self.percentile = float(percentile)
        self.standardize = bool(standardize)
        self.strong_augment = bool(strong_augment)
        self.crop_padding = int(crop_padding)
        self.seed = seed
        # Distinct seeds, so the flips, crops and operations are unrelated.
        seeds = [None if seed is None else seed + i for i in range(3)]
        self.strong = RandAugmentCutout(mean=mean, std=std, seed=seeds[0])
        self.mean, self.std = self.strong.mean, self.strong.std
        if self.crop_padding:
            black = -np.asarray(self.mean, "float32") / np.asarray(self.std, "float32")
            self.flip = layers.RandomFlip("horizontal", seed=seeds[1])
            self.crop = RandomPaddedCrop(
                self.crop_padding, black.tolist(), seed=seeds[2]
            )

    def transform_inputs(self, x, training=True):
        if (self.strong_augment or self.crop_padding) and len(x.shape) != 4:
            raise ValueError(
                f"MultiLevelLogitDistillation augments image batches (batch, "
                f"H, W, C) into its weak and strong views; got inputs of "
                f"shape {tuple(x.shape)}. Use strong_augment=False and "
                f"crop_padding=0 for other inputs."
            )
        weak, strong = x, x
        if training and self.crop_padding:  # Each view on its own.
            weak = self.crop(self.flip(x, training=True), training=True)
            strong = self.crop(self.flip(x, training=True), training=True)
        if training and self.strong_augment:
            strong = self.strong(strong, training=True)
        return ops.concatenate([weak, strong], axis=0)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(teacher_outputs_shape) != 1:
            raise ValueError(
                f"MultiLevelLogitDistillation distils one teacher, got "
                f"{len(teacher_outputs_shape)}."
            )
        if "logits" not in teacher_outputs_shape[0]:
            raise ValueError(
                "MultiLevelLogitDistillation tempers the teacher's logits at "
                "several temperatures; a kd.SoftLabelTeacher has fixed "
                "probabilities. Use a trained teacher model."
            )
        shape = tuple(student_outputs_shape["logits"])
        if len(shape) != 2:
            raise ValueError(
                f"MultiLevelLogitDistillation relates the samples and classes "
                f"of a batch of logits (batch, classes), which has no "
                f"per-token meaning; the logits have shape {shape}. Use a "
                f"per-token term (kd.losses.LogitsDistillation) for "
                f"sequence logits."
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        if labels is None:
            raise ValueError(
                "MultiLevelLogitDistillation's strong-view cross-entropy "
                "needs the labels; give `y` to fit()."
            )
        z_s = ops.cast(student_outputs["logits"], "float32")
        z_t = ops.cast(teacher_outputs[0]["logits"], "float32")
        batch = ops.shape(z_s)[0] // 2
        raw = {"weak": (z_s[:batch], z_t[:batch]), "strong": (z_s[batch:], z_t[batch:])}
        # Confidences: the teacher's weak-view softmax at T = 1.
        p_t = ops.softmax(raw["weak"][1], axis=-1)
        sample_fraction = fraction_at_most(ops.max(p_t, axis=-1), self.percentile)
        class_fraction = fraction_at_most(ops.sum(p_t, axis=0), self.percentile)

        kd_views = raw
        if self.standardize:
            kd_views = {
                view: tuple(standardize_logits(z) for z in pair)
                for view, pair in raw.items()
            }
        masked, unmasked, classes, samples = 0.0, 0.0, 0.0, 0.0
        for t, view in zip(self.temperatures, self.strong_kd_views):
            masked = masked + instance_kd(*kd_views["weak"], t)
            unmasked = unmasked + instance_kd(*kd_views[view], t)
            classes = classes + class_relation(*raw["weak"], t)
            samples = samples + batch_relation(*raw["weak"], t)

        z_strong = raw["strong"][0]
        indices = class_indices(labels, z_strong.shape, "MultiLevelLogitDistillation")
        log_p = ops.log_softmax(z_strong, axis=-1)
        ce = -ops.mean(ops.take_along_axis(log_p, indices[:, None], axis=-1))
        return {
            "instance": self.kd_weight * (sample_fraction * masked + unmasked),
            "class": self.kd_weight * class_fraction * classes,
            "batch": self.kd_weight * sample_fraction * samples,
            "ce_strong": self.ce_weight * ce,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "temperatures": self.temperatures,
            "strong_kd_views": self.strong_kd_views,
            "kd_weight": self.kd_weight,
            "ce_weight": self.ce_weight,
            "percentile": self.percentile,
            "standardize": self.standardize,
            "strong_augment": self.strong_augment,
            "crop_padding": self.crop_padding,
            "mean": self.mean,
            "std": self.std,
            "seed": self.seed,
        }
