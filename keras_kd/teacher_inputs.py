"""Teachers that take other inputs than the student: `teacher_preprocessing`.

`kd.Distiller(..., teacher_preprocessing=...)` gives each teacher its own
input transform, applied inside the compiled step to the batch the student
gets (after augmentation): the inverse of the student's normalisation for a
teacher with its own preprocessing (a leading `Rescaling(1/255)` or
`Normalization`, as most `keras.applications` models have), a `Resizing` to
the teacher's resolution, or both. The student still runs once per step and the
teachers in inference mode.

Example:

```python
mean, std = kd.data.channel_stats(x_uint8)  # The student gets (x - mean) / std.
distiller = kd.Distiller(
    pixel_teacher, student, kd.losses.LogitsDistillation(),
    teacher_preprocessing=keras.Sequential([
        kd.teacher_inputs.unnormalize(mean, std),  # Back to 0..255 pixels.
        keras.layers.Resizing(224, 224),  # The teacher's resolution.
    ]))
```
"""

import warnings

import keras
import numpy as np

from keras_kd.offline.recorded_teacher import RecordedTeacher
from keras_kd.soft_label_teacher import SoftLabelTeacher

# Layers that only move or resize pixels: seen through when looking for a
# teacher's own input scaling.
_GEOMETRIC = (keras.layers.Resizing, keras.layers.CenterCrop)


def unnormalize(mean, std, name="unnormalize"):
    """The inverse of `(x - mean) / std`: a `keras.layers.Normalization`
    with `invert=True` (per channel; `mean`, `std` on the pixel scale).

    Example: `kd.teacher_inputs.unnormalize([125.3, 123.0, 113.9],
    [63.0, 62.1, 66.7])` maps CIFAR-normalised images back to 0..255.
    """
    mean = np.asarray(mean, "float32")
    std = np.asarray(std, "float32")
    return keras.layers.Normalization(
        mean=mean, variance=np.square(std), invert=True, name=name
    )


def resolve(preprocessing, teachers):
    """One transform (or None) per teacher, checked and frozen.

    A list gives one entry per teacher; a single transform applies to every
    teacher. Recorded and soft-label teachers are fed no images and refuse
    one. Example: `resolve([None, keras.layers.Resizing(32, 32)], [a, b])`.
    """
    if isinstance(preprocessing, (list, tuple)):
        if len(preprocessing) != len(teachers):
            raise ValueError(
                f"teacher_preprocessing holds {len(preprocessing)} entries for "
                f"{len(teachers)} teachers; give one per teacher (None: the "
                f"student's inputs unchanged) or a single transform for all."
            )
        values = list(preprocessing)
    else:
        values = [preprocessing] * len(teachers)
    for i, (value, teacher) in enumerate(zip(values, teachers)):
        if value is None:
            continue
        if isinstance(teacher, (RecordedTeacher, SoftLabelTeacher)):
            raise ValueError(
                f"teacher_preprocessing[{i}] is given for teacher "
                f"'{teacher.name}', a {type(teacher).__name__}, which reads "
                f"no images (recorded targets or the labels); give None for "
                f"it (a record's preprocessing is applied when recording)."
            )
        if not callable(value):
            raise ValueError(
                f"teacher_preprocessing[{i}] must be a Keras layer or model "
                f"(e.g. keras.layers.Resizing(224, 224)) or a callable on "
                f"batches, got {type(value).__name__}."
            )
        if isinstance(value, keras.layers.Layer):
            value.trainable = False
    return values


def apply(preprocessing, inputs):
    """`preprocessing(inputs)` in inference mode; `inputs` when None."""
    if preprocessing is None:
        return inputs
    if isinstance(preprocessing, keras.layers.Layer):
        return preprocessing(inputs, training=False)
    return preprocessing(inputs)


def output_shape(preprocessing, input_shape, index):
    """The shape `preprocessing` maps `input_shape` to (a symbolic call)."""
    if preprocessing is None:
        return tuple(input_shape)
    try:
        return tuple(apply(preprocessing, keras.KerasTensor(input_shape)).shape)
    except Exception as e:  # Any error of user code: named, then re-raised.
        raise ValueError(
            f"teacher_preprocessing[{index}] cannot be applied to the "
            f"student's inputs of shape {tuple(input_shape)}: {e}"
        ) from e


def with_preprocessing(teacher, preprocessing, input_shape):
    """`teacher` behind its preprocessing, as one functional model taking
    the student's inputs (`input_shape` without the batch axis); the
    teacher itself when `preprocessing` is None. Example:
    `with_preprocessing(t, keras.layers.Resizing(32, 32), (8, 8, 1))`."""
    if preprocessing is None:
        return teacher
    inputs = keras.Input(tuple(input_shape))
    outputs = teacher(apply(preprocessing, inputs), training=False)
    name = getattr(preprocessing, "name", "inputs")
    return keras.Model(inputs, outputs, name=f"{teacher.name}_{name}")


def leading_scaling(model):
    """The `Rescaling` or `Normalization` layer a model's graph starts with
    (after its inputs, resizing or cropping; nested models are looked
    into), else None. Subclassed models are opaque and give None."""
    if not isinstance(model, keras.Model) or not _is_graph(model):
        return None
    for layer in model.layers:
        if isinstance(layer, (keras.layers.InputLayer,) + _GEOMETRIC):
            continue
        if isinstance(layer, keras.Model):
            return leading_scaling(layer)
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return layer
        return None
    return None


def expects_pixels(layer):
    """Whether a leading scaling layer expects 0..255 pixels: a `Rescaling`
    by at most 1/50 (1/255, 1/127.5) or a `Normalization` whose means are
    on the pixel scale (ConvNeXt's 0.485·255, ...)."""
    if isinstance(layer, keras.layers.Rescaling):
        scale = np.abs(np.asarray(layer.scale, "float64"))
        return bool(scale.size) and float(scale.max()) <= 1.0 / 50
    if isinstance(layer, keras.layers.Normalization) and not layer.invert:
        mean = layer.input_mean if layer.input_mean is not None else layer.mean
        if mean is None:
            return False
        return float(np.max(np.abs(keras.ops.convert_to_numpy(mean)))) >= 2.0
    return False


def warn_if_normalised(teachers, preprocessing, x):
    """Warns when a teacher that scales 0..255 pixels itself (see
    `expects_pixels`) and has no preprocessing is fed a batch that looks
    normalised already (negative values, or none above 1)."""
    pixel_teachers = [
        (teacher, layer)
        for teacher, value in zip(teachers, preprocessing)
        if value is None
        for layer in [leading_scaling(teacher)]
        if layer is not None and expects_pixels(layer)
    ]
    if not pixel_teachers:
        return
    batch = _sample_batch(x)
    if batch is None or batch.size == 0:
        return
    low, high = float(batch.min()), float(batch.max())
    if low >= 0.0 and high > 1.0:
        return
    for teacher, layer in pixel_teachers:
        warnings.warn(
            f"Teacher '{teacher.name}' starts with its own input scaling "
            f"(layer '{layer.name}', {type(layer).__name__}): it expects "
            f"0..255 pixels, but the first training batch lies in "
            f"[{low:.3g}, {high:.3g}], which looks normalised already, so "
            f"the teacher may predict at chance. Give it its inputs back: "
            f"kd.Distiller(..., teacher_preprocessing=kd.teacher_inputs."
            f"unnormalize(mean, std)), the inverse of the student's "
            f"normalisation (add keras.layers.Resizing for another size).",
            stacklevel=3,
        )


def _sample_batch(x, size=256):
    """Up to `size` images of `fit`'s `x` as NumPy (arrays, tensors, dicts
    with "inputs", tf.data datasets, PyDatasets), else None."""
    try:
        if isinstance(x, keras.utils.PyDataset):
            x = x[0][0]
        elif hasattr(x, "element_spec") and hasattr(x, "take"):  # tf.data
            x = next(iter(x.take(1)))
            x = x[0] if isinstance(x, tuple) else x
        if isinstance(x, dict):
            x = x.get("inputs")
        if x is None or not hasattr(x, "shape"):
            return None
        return np.asarray(keras.ops.convert_to_numpy(x[:size]), "float32")
    except Exception:  # A heuristic for a warning: never break `fit`.
        return None


def _is_graph(model):
    try:
        return model.inputs is not None and model.outputs is not None
    except (AttributeError, ValueError):
        return False
