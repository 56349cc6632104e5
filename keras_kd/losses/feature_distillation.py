import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import sample_or_token_mean
from keras_kd.losses.keras_api import KerasLossAPI

_LOSSES = ("mse", "mae", "cosine")


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureDistillation(KerasLossAPI, DistillationTerm):
    """Distance between teacher and student features, optionally through a
    learned projection of the student's last axis.

    The `keras.distillation.FeatureDistillation` counterpart: by default no
    trainable weights, so the two layers must have identical shapes (use
    `FeatureAlignment` otherwise). `None` names mean the final outputs.
    `loss` is `"mse"`, `"mae"` or `"cosine"` (1 − cosine similarity of the
    flattened features), per sample; sequence features `(batch, length,
    features)` give one value per token (cosine over the feature axis, as
    Keras' `"cosine_similarity"`). Like Keras' loss object it has
    `compute_loss(teacher_features, student_features)` (equal to Keras'
    for `"mse"` and `"mae"`), `validate_outputs` and
    `validate_model_compatibility`.

    `projection=True` aligns layers of different widths, e.g. the hidden
    states `(batch, length, D_s)` and `(batch, length, D_t)` of two
    transformers: a `Dense(D_t)` (kernel and bias, one per teacher) maps
    the student's last axis before the distance, `d(f_s W + b, f_t)` per
    token, masked by a `(batch, length)` `sample_weight` like the logit
    terms. It is built with the term, trains with the student and is not
    part of `distiller.student`; the other axes must match. Layers of a
    keras_hub backbone are read by name (`"transformer_layer_1"`, see
    `keras_kd.model_outputs.tap`; docs/methods.md §12).

    Example:

    ```python
    term = kd.losses.FeatureDistillation("stage3", "stage3", loss="mse")
    hidden = kd.losses.FeatureDistillation(
        "transformer_layer_3", "transformer_layer_1", projection=True)
    ```
    """

    reads_sequences = True

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        loss="mse",
        projection=False,
        **kwargs,
    ):
        if loss not in _LOSSES:
            raise ValueError(
                f"Unknown loss '{loss}' for FeatureDistillation; use one of {_LOSSES}."
            )
        super().__init__(
            [teacher_layer_name or "logits"],
            [student_layer_name or "logits"],
            **kwargs,
        )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.loss = loss
        self.projection = bool(projection)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shape = tuple(student_outputs_shape[self.student_layer_names[0]])
        self.projections = []
        for i, shapes in enumerate(teacher_outputs_shape):
            teacher_shape = tuple(shapes[self.teacher_layer_names[0]])
            self._check_pair(teacher_shape, student_shape)
            if self.projection:
                dense = keras.layers.Dense(
                    teacher_shape[-1], dtype="float32", name=f"projection_{i}"
                )
                dense.build(student_shape)
                self.projections.append(dense)

    def _check_pair(self, teacher_shape, student_shape):
        if self.projection:
            if not _same_sizes(teacher_shape[1:-1], student_shape[1:-1]):
                raise ValueError(
                    f"FeatureDistillation(projection=True) maps the last "
                    f"axis only, so the other axes must match, but teacher "
                    f"layer '{self.teacher_layer_names[0]}' has shape "
                    f"{teacher_shape} and student layer "
                    f"'{self.student_layer_names[0]}' has shape "
                    f"{student_shape}. Use kd.losses.FeatureAlignment for "
                    f"feature maps of different sizes."
                )
            return
        if teacher_shape[1:] != student_shape[1:]:
            widths = teacher_shape[1:-1] == student_shape[1:-1]
            raise ValueError(
                f"FeatureDistillation needs features of the same shape, "
                f"but teacher layer '{self.teacher_layer_names[0]}' has "
                f"shape {teacher_shape} and student layer "
                f"'{self.student_layer_names[0]}' has shape "
                f"{student_shape}. "
                + (
                    "Use kd.losses.FeatureAlignment, or give "
                    "projection=True to learn a projection of the student's "
                    "last axis (e.g. transformer hidden states)."
                    if widths
                    else "Use kd.losses.FeatureAlignment, which learns a "
                    "mapping between different shapes."
                )
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        f_s = ops.cast(student_outputs[self.student_layer_names[0]], "float32")
        if self.projection and not self.built:
            raise ValueError(
                "FeatureDistillation(projection=True) creates its projection "
                "when built: use it in a kd.Distiller, or call "
                "term.build(teacher_shapes, student_shapes) first."
            )
        total = 0.0
        for i, (w, out) in enumerate(zip(teacher_weights, teacher_outputs)):
            f_t = ops.cast(out[self.teacher_layer_names[0]], "float32")
            mapped = self.projections[i](f_s) if self.projection else f_s
            total = total + w * self._distance(f_t, mapped)
        return total

    def _distance(self, f_t, f_s):
        sequence = len(f_s.shape) == 3
        if self.loss == "mse":
            return sample_or_token_mean(ops.square(f_s - f_t), sequence)
        if self.loss == "mae":
            return sample_or_token_mean(ops.abs(f_s - f_t), sequence)
        if not sequence:
            batch = ops.shape(f_s)[0]
            f_s, f_t = ops.reshape(f_s, (batch, -1)), ops.reshape(f_t, (batch, -1))
        f_s, f_t = ops.normalize(f_s, axis=-1), ops.normalize(f_t, axis=-1)
        return 1.0 - ops.sum(f_s * f_t, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "loss": self.loss,
            "projection": self.projection,
        }


def _same_sizes(a, b):
    """Whether two shapes agree where both sizes are known."""
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b)
    )
