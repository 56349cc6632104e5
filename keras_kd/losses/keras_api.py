"""The `keras.distillation.DistillationLoss` methods, on keras_kd terms."""

import keras
from keras import ops

from keras_kd import model_outputs
from keras_kd.losses.base import weighted_mean


class KerasLossAPI:
    """`compute_loss`, `validate_outputs`, `validate_model_compatibility`.

    Mixed into the terms that correspond to `keras.distillation` losses, so
    code calling those loss objects directly switches by changing the
    import. Arguments mean what they mean in `keras.distillation`: a tensor,
    or a nested structure of tensors (the same for teacher and student);
    `compute_loss` returns the sum over the structure of each pair's
    (weighted) batch mean. The class implements
    `_check_pair(teacher_shape, student_shape)`.

    Example:

    ```python
    kd_loss = kd.losses.LogitsDistillation(temperature=4.0)
    kd_loss.validate_model_compatibility(teacher, student)
    loss = kd_loss.compute_loss(teacher(x), student(x))
    ```
    """

    def compute_loss(
        self, teacher_outputs, student_outputs, sample_weight=None, **kwargs
    ):
        """The term's batch mean for each (teacher, student) pair, summed.

        `sample_weight`, `(batch,)` or `(batch, length)` for sequence
        outputs, weighs it as `kd.losses.base.weighted_mean` says (per
        token: the mean over real tokens). Other `**kwargs` are accepted and
        ignored, as in `keras.distillation`.
        """
        self.validate_outputs(teacher_outputs, student_outputs)
        teacher_key, student_key = self._keys()

        def pair_loss(teacher, student):
            value = self.call(
                [{teacher_key: teacher}],
                {student_key: student},
                teacher_weights=[1.0],
            )
            return weighted_mean(value, sample_weight, self.name)

        values = keras.tree.map_structure(pair_loss, teacher_outputs, student_outputs)
        return ops.sum(ops.stack(keras.tree.flatten(values)))

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Raises a ValueError unless the outputs can be compared."""
        try:
            keras.tree.assert_same_structure(teacher_outputs, student_outputs)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{type(self).__name__}: teacher and student outputs have "
                f"different structures; give the same nesting for both. {e}"
            ) from None
        for teacher, student in zip(
            keras.tree.flatten(teacher_outputs),
            keras.tree.flatten(student_outputs),
        ):
            self._check_pair(tuple(teacher.shape), tuple(student.shape))

    def validate_model_compatibility(self, teacher, student):
        """Raises a ValueError unless the term can read both models.

        Checks what `kd.Distiller` checks when built: the layers exist, a
        subclassed model exposes them, and their shapes agree.
        """
        teacher_key, student_key = self._keys()
        _, teacher_shapes = model_outputs.tap(teacher, [teacher_key], "teacher")
        _, student_shapes = model_outputs.tap(student, [student_key], "student")
        teacher_shape = teacher_shapes.get(teacher_key) or teacher_shapes.get(
            "probabilities"
        )
        self._check_pair(tuple(teacher_shape), tuple(student_shapes[student_key]))

    def _keys(self):
        return (
            (self.teacher_layer_names or ["logits"])[0],
            (self.student_layer_names or ["logits"])[0],
        )
