import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import standardize_logits
from keras_kd.losses.base import tempered_kl


@keras.saving.register_keras_serializable(package="keras_kd")
class SubsetLogitsDistillation(DistillationTerm):
    """Logit KD on a class subset: the SKD baseline of docs/methods.md §2.

    The teacher covers more classes than the student, whose class `k` is
    the teacher's class `class_indices[k]`. The target is the teacher's
    softmax restricted to those classes and renormalised, which equals
    `softmax(z_t[:, S] / T)`; per sample
    `T² · KL(softmax(z_t[:, S]/T) ‖ softmax(z_s/T))`, in float32. With
    several teachers the target is the weighted mean of their restricted
    distributions. Sequence logits `(batch, length, classes)` give one
    value per token.

    The Distiller checks before training that there is one index per
    student class and that every index is a class of each teacher.

    Args:
        class_indices: teacher class ids of the student's classes, in the
            student's label order (e.g. `mapping.original_ids` from
            `kd.data.class_subset`).
        temperature: `T`.
        standardize: z-score the teacher's restricted logits `z_t[..., S]`
            and the student's logits over the class axis before the
            temperature
            (logit standardization, Sun et al., CVPR 2024).

    Example:

    ```python
    (x, y), mapping = kd.data.class_subset((x, y), [3, 5, 8])
    term = kd.losses.SubsetLogitsDistillation(mapping.original_ids, 4.0)
    distiller = kd.Distiller(teacher_10_classes, student_3_classes, term,
                             student_loss_weight=0.1)
    ```
    """

    uses_logits = True
    reads_sequences = True

    def __init__(self, class_indices, temperature=4.0, standardize=False, **kwargs):
        super().__init__(**kwargs)
        indices = [int(i) for i in class_indices]
        if not indices or any(i != j for i, j in zip(indices, class_indices)):
            raise ValueError(
                f"class_indices must be a non-empty list of integer teacher "
                f"class ids, got {class_indices!r}."
            )
        if min(indices) < 0 or len(set(indices)) != len(indices):
            raise ValueError(
                f"class_indices must be distinct non-negative teacher class "
                f"ids, got {indices}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.class_indices = indices
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        t = self.temperature
        prepare = (
            standardize_logits
            if self.standardize
            else (lambda z: ops.cast(z, "float32"))
        )
        target = sum(
            w
            * ops.softmax(
                prepare(ops.take(out["logits"], self.class_indices, axis=-1)) / t,
                axis=-1,
            )
            for w, out in zip(teacher_weights, teacher_outputs)
        )
        return tempered_kl(target, {"logits": prepare(student_outputs["logits"])}, t)

    def get_config(self):
        return {
            **super().get_config(),
            "class_indices": self.class_indices,
            "temperature": self.temperature,
            "standardize": self.standardize,
        }
