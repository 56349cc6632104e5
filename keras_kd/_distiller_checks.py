"""The argument checks of `kd.Distiller`'s constructor.

Each returns the validated value or raises a ValueError that names the
argument and the fix.

Example:

```python
weights = _distiller_checks.loss_weights(None, terms)  # [1.0, ...]
```
"""

import math

import keras

from keras_kd import model_outputs
from keras_kd import teacher_inputs
from keras_kd.losses.base import SEQUENCE_TERMS
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.keras_adapter import KerasDistillationLoss
from keras_kd.offline.recorded_teacher import RecordedTeacher
from keras_kd.soft_label_teacher import SoftLabelTeacher


def models(teachers, student):
    """Validates the teachers' and the student's types."""
    if not teachers:
        raise ValueError("`teacher` is an empty list; give at least one.")
    for model in teachers:
        if not isinstance(model, (keras.Model, SoftLabelTeacher, RecordedTeacher)):
            raise ValueError(
                f"Each teacher must be a keras.Model, a "
                f"kd.SoftLabelTeacher or a kd.offline.RecordedTeacher, "
                f"got {type(model).__name__}."
            )
    if not isinstance(student, keras.Model):
        raise ValueError(
            f"`student` must be a keras.Model, got {type(student).__name__}."
        )


def distillation_losses(losses):
    """Returns the terms, `keras.distillation` losses wrapped."""
    if losses is None or losses == []:
        raise ValueError(
            "`distillation_losses` is empty; give at least one term, e.g. "
            "kd.losses.LogitsDistillation()."
        )
    return [
        term if isinstance(term, DistillationTerm) else KerasDistillationLoss(term)
        for term in as_list(losses)
    ]


def loss_weights(distillation_loss_weights, terms):
    """Returns one weight per term (default 1.0 each)."""
    if distillation_loss_weights is None:
        distillation_loss_weights = [1.0] * len(terms)
    if len(distillation_loss_weights) != len(terms):
        raise ValueError(
            f"Got {len(distillation_loss_weights)} "
            f"distillation_loss_weights for {len(terms)} "
            f"distillation_losses; give one weight per term."
        )
    return [float(w) for w in distillation_loss_weights]


def student_loss_weight(weight, weighting):
    """Validates `weighting` and the range it allows the weight."""
    if weighting not in ("convex", "additive"):
        raise ValueError(
            f"weighting must be 'convex' or 'additive', got {weighting!r}."
        )
    upper = 1.0 if weighting == "convex" else math.inf
    if not isinstance(weight, (int, float)) or not 0.0 <= weight <= upper:
        raise ValueError(
            f"student_loss_weight must be a number in [0, {upper:g}] with "
            f"weighting='{weighting}', got {weight!r}."
        )


def teacher_weights(weights, teachers):
    """Returns the teacher weights normalised to sum to 1."""
    if weights is None:
        weights = [1.0] * len(teachers)
    if len(weights) != len(teachers) or min(weights) <= 0:
        raise ValueError(
            f"teacher_weights must hold one positive weight per teacher "
            f"({len(teachers)} teachers), got {list(weights)}."
        )
    total_weight = float(sum(weights))
    return [float(w) / total_weight for w in weights]


def teacher_batch_statistics(value, teachers):
    """Returns one bool per teacher; refuses a list of another length and
    teachers that run no network (`kd.SoftLabelTeacher`, a record)."""
    flags = value if isinstance(value, (list, tuple)) else [value] * len(teachers)
    if len(flags) != len(teachers) or not all(isinstance(f, bool) for f in flags):
        raise ValueError(
            f"teacher_batch_statistics must be a bool or a list of one bool "
            f"per teacher ({len(teachers)} teachers), got {value!r}."
        )
    for flag, model in zip(flags, teachers):
        if flag and not isinstance(model, keras.Model):
            raise ValueError(
                f"teacher_batch_statistics=True for teacher '{model.name}', a "
                f"{type(model).__name__}, which runs no BatchNorm; give a list "
                f"with False for it."
            )
    return list(flags)


def supervised_loss(loss, weight, student):
    """`compile`'s check: a supervised `loss` when `student_loss_weight`
    is positive, one a softmax student can feed."""
    if weight <= 0:
        return
    if loss is None:
        raise ValueError(
            f"compile() needs the student's supervised `loss` because "
            f"student_loss_weight={weight}, e.g. "
            f"loss=keras.losses.SparseCategoricalCrossentropy("
            f"from_logits=True)."
        )
    model_outputs.check_student_head(student, [], loss)


def view_terms(terms):
    """Returns the terms that expand the batch into views (at most one)."""
    found = [term for term in terms if term.num_views > 1]
    if len(found) > 1:
        raise ValueError(
            f"Only one term may expand the batch into views; got "
            f"{[term.name for term in found]}."
        )
    return found


def evaluate_teacher(value, side_input_names, views):
    """Resolves `evaluate_teacher` (`None`: whether evaluation can run the
    teachers and terms on plain `(x, y)` batches)."""
    blockers = [f"batch entries {side_input_names}"] if side_input_names else []
    blockers += [f"the views of term '{term.name}'" for term in views]
    if value is None:
        return not blockers
    if value and blockers:
        raise ValueError(
            f"evaluate_teacher=True, but the distillation loss reads "
            f"{' and '.join(blockers)}, which evaluation batches do not "
            f"carry. Use evaluate_teacher=False (evaluate the student "
            f"alone) or None."
        )
    return bool(value)


def input_shapes(student, teachers, views, preprocessing):
    """Refuses teachers whose input shape differs from what they are fed:
    the student's inputs through their `teacher_preprocessing`; runs a view
    term's input checks on the student's input shape."""
    student_shape = model_outputs.input_shape(student)
    if not student_shape:
        return
    # A symbolic pass raises a view term's input errors (e.g.
    # rotations of non-square images) before training.
    for term in views:
        term.transform_inputs(keras.KerasTensor(student_shape))
    for i, (model, transform) in enumerate(zip(teachers, preprocessing)):
        teacher_shape = model_outputs.input_shape(model)
        fed = teacher_inputs.output_shape(transform, student_shape, i)
        if not teacher_shape or not _differ(fed, teacher_shape):
            continue
        if transform is None:
            raise ValueError(
                f"Teacher '{model.name}' takes inputs of shape "
                f"{teacher_shape} but the student takes {student_shape}; "
                f"both run on the same batch, so they must agree, or give "
                f"the teacher its own input transform with "
                f"teacher_preprocessing (e.g. keras.layers.Resizing"
                f"{tuple(teacher_shape[1:3])})."
            )
        raise ValueError(
            f"teacher_preprocessing[{i}] maps the student's inputs of shape "
            f"{student_shape} to {fed}, but teacher '{model.name}' takes "
            f"inputs of shape {teacher_shape}; make the transform's output "
            f"match the teacher's input."
        )


def _differ(shape, other):
    return len(shape) != len(other) or any(
        s is not None and t is not None and s != t for s, t in zip(shape[1:], other[1:])
    )


def sequence_logits(terms, student_shapes):
    """Refuses sequence logits `(batch, length, classes)` to the terms that
    read the logits but give no per-token values (`reads_sequences`)."""
    shape = tuple(student_shapes["logits"])
    if len(shape) != 3:
        return
    for term in terms:
        names = set(term.teacher_layer_names) | set(term.student_layer_names)
        if term.reads_sequences or not (term.uses_logits or "logits" in names):
            continue
        raise ValueError(
            f"{type(term).__name__} (term '{term.name}') compares whole "
            f"samples, but the logits have shape {shape}: one score vector "
            f"per token of a sequence, which it cannot read. Terms that give "
            f"one value per token: {SEQUENCE_TERMS}. Use one of them on the "
            f"logits, or give {type(term).__name__} a (batch, features) layer."
        )


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def each(function, value):
    """`function` of each item of a list or tuple (a list), or of `value`
    (the teachers' and `teacher_preprocessing`'s (de)serialisation)."""
    if isinstance(value, (list, tuple)):
        return [function(item) for item in value]
    return function(value)
