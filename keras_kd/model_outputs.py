"""What keras_kd reads from teacher and student models.

A "tap" runs a model once and returns `{"logits": ..., name: feature}`:
functional and Sequential models expose every layer by name, including
the layers of functional models nested in them (a keras_hub task's
backbone: `"transformer_layer_1"`, or `"gpt2_backbone/transformer_layer_1"`
when the bare name is ambiguous); a subclassed model returns either its
logits (enough for logit-only terms) or a dict of named outputs. A
teacher whose head is a softmax is tapped for its log-probabilities,
which tempered softmaxes treat as logits exactly:
`softmax(log p / T) = p^(1/T) / Σ p^(1/T)`.

Example:

```python
tap, shapes = model_outputs.tap(teacher, ["stage3"], "teacher")
outputs = tap(images, training=False)  # {"logits": ..., "stage3": ...}
```
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_kd._compat import producing_layer
from keras_kd.offline.recorded_teacher import RecordedTeacher
from keras_kd.soft_label_teacher import SoftLabelTeacher

# Clip of probabilities before the log: the smallest normal float32, so an
# underflowed probability gives a finite log (-87.3) without lifting the
# tempered targets of small but representable ones.
PROBABILITY_FLOOR = float(np.finfo("float32").tiny)


def tap(model, layer_names, role):
    """A callable returning `{"logits": ..., name: feature}` and the shapes.

    Returns `(None, shapes)` for a `SoftLabelTeacher`, which is fed labels,
    and for a `kd.offline.RecordedTeacher`, which is fed recorded targets.
    A teacher with a softmax head yields its log-probabilities as logits.
    """
    features = [name for name in layer_names if name != "logits"]
    if isinstance(model, RecordedTeacher):  # Fed recorded targets.
        return None, model.output_shapes()
    if isinstance(model, SoftLabelTeacher):
        if features:
            raise ValueError(
                f"A SoftLabelTeacher has no features, but the terms ask the "
                f"{role} for {features}. Use logit terms only with it."
            )
        return None, {"probabilities": (None, model.num_classes)}
    if not model.built:
        raise ValueError(
            f"The {role} model '{model.name}' is not built. Build it first "
            f"(give it a keras.Input, call model.build(input_shape), or call "
            f"it on a batch)."
        )
    outputs = _symbolic_outputs(model)
    if outputs is not None:
        if len(outputs) != 1:
            raise ValueError(
                f"The {role} model '{model.name}' has {len(outputs)} outputs; "
                f"keras_kd expects one (the logits)."
            )
        layers = find_layers(model, features, role)
        logits = outputs[0]
        head = softmax_layer(model)
        if role == "teacher" and head is not None:
            warnings.warn(
                f"Teacher '{model.name}' ends in a softmax (layer "
                f"'{head.name}'); its log-probabilities are used as logits.",
                stacklevel=2,
            )
            logits = ops.log(
                ops.maximum(ops.cast(logits, "float32"), PROBABILITY_FLOOR)
            )
        tapped = {"logits": logits}
        tapped.update(
            {name: _layer_output(layers[name], role, model) for name in features}
        )
        nested = [n for n in features if layers[n] not in model.layers]
        tapped_model = _tap_model(model, tapped, role, nested)
        return tapped_model, {name: tuple(t.shape) for name, t in tapped.items()}
    # A subclassed model: its logits, or a dict of named outputs.
    input_shape = (model.get_build_config() or {}).get("input_shape")
    spec = None
    if input_shape is not None:
        spec = model.compute_output_spec(keras.KerasTensor(input_shape))
    if isinstance(spec, keras.KerasTensor) and not features:
        return _LogitsTap(model), {"logits": tuple(spec.shape)}
    if not isinstance(spec, dict) or "logits" not in spec:
        asked = f" and the terms read {features}" if features else ""
        raise ValueError(
            f"The {role} model '{model.name}' is a subclassed model whose "
            f"outputs keras_kd cannot name{asked}. Make its call() return "
            f"its logits tensor (enough for logit-only terms) or a dict of "
            f"named outputs with a 'logits' entry and one entry per feature "
            f"the terms read, or rebuild it as a functional model."
        )
    _check_names(features, list(spec), role, model, "output")
    return model, {name: tuple(t.shape) for name, t in spec.items()}


def find_layers(model, names, role="model"):
    """`{name: layer}` for layer names of a functional or Sequential model.

    A name is a layer of the model itself, a path through nested functional
    models (`"backbone/transformer_layer_1"`), or the bare name of one
    layer of a nested model (`"transformer_layer_1"`) when no other layer
    has it. Raises a ValueError for a missing or ambiguous name.
    """
    paths = list(_nested_layers(model))
    found = {}
    for name in names:
        matches = [layer for path, layer in paths if path == name]
        if not matches:
            matches = [layer for path, layer in paths if path.split("/")[-1] == name]
        if len(matches) > 1:
            options = [p for p, _ in paths if p.split("/")[-1] == name]
            raise ValueError(
                f"The {role} model '{model.name}' has several layers named "
                f"{name!r}, in nested models: {options}. Give the path of "
                f"the one to read."
            )
        if matches:
            found[name] = matches[0]
    missing = [name for name in names if name not in found]
    _check_names(missing, [layer.name for layer in model.layers], role, model, "layer")
    return found


def _nested_layers(model, prefix=""):
    """`(path, layer)` for a model's layers and, depth first, those of the
    functional models nested in it (`"outer/inner"` paths)."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        yield path, layer
        if isinstance(layer, keras.Model) and _symbolic_outputs(layer):
            yield from _nested_layers(layer, f"{path}/")


def _layer_output(layer, role, model):
    try:
        return layer.output
    except (AttributeError, ValueError):
        raise ValueError(
            f"Layer '{layer.name}' of the {role} model '{model.name}' is "
            f"called more than once (or never), so it has no single output "
            f"to read. Pick a layer called once, e.g. the one after it."
        ) from None


def _tap_model(model, tapped, role, nested):
    """The functional model of the tapped outputs; `nested` names the
    layers read inside nested models, which may be out of reach."""
    try:
        return keras.Model(model.inputs, tapped, name=f"{model.name}_tap")
    except ValueError as e:
        if not nested:
            raise
        raise ValueError(
            f"The layers {nested} of nested models of the {role} model "
            f"'{model.name}' are not reachable from its inputs: a nested "
            f"model's layer can be read only when the nested model is "
            f"called on the outer model's own inputs (as keras_hub tasks "
            f"call their backbone). Read a layer of the model itself. ({e})"
        ) from None


def softmax_layer(model):
    """The layer whose softmax makes a model's single output, else `None`.

    Seen through functional and Sequential models (nested ones included):
    a `Softmax` layer, or any layer with `activation="softmax"`
    (`Dense(..., activation="softmax")`, `Activation("softmax")`).
    Subclassed models are opaque and give `None`.
    """
    outputs = _symbolic_outputs(model)
    if not outputs or len(outputs) != 1:
        return None
    layer = producing_layer(outputs[0])
    if isinstance(layer, keras.Model):
        return softmax_layer(layer)
    if isinstance(layer, keras.layers.Softmax):
        return layer
    activation = getattr(layer, "activation", None)
    if activation is keras.activations.softmax or (
        getattr(activation, "__name__", None) == "softmax"
    ):
        return layer
    return None


def check_student_head(student, terms, loss=None):
    """Refuses a softmax student read as logits, naming the layer and fix.

    `terms` are the Distiller's terms; `loss` the compiled supervised loss
    (a `from_logits=True` loss would apply a second softmax).
    """
    head = softmax_layer(student)
    if head is None:
        return
    logit_terms = [term.name for term in terms if term.uses_logits]
    from_logits = [
        type(item).__name__ for item in keras.tree.flatten(loss) if _from_logits(item)
    ]
    if not logit_terms and not from_logits:
        return
    if logit_terms:
        readers, other_fix = f"the terms {logit_terms} read its outputs", ""
    else:
        readers = f"the loss {from_logits} has from_logits=True and reads them"
        other_fix = " (or compile with from_logits=False)"
    raise ValueError(
        f"The student '{student.name}' ends in a softmax (layer "
        f"'{head.name}'), but {readers} as logits: a second softmax would "
        f"flatten them. Remove the softmax from the student (e.g. "
        f"Dense(..., activation=None)) so it returns logits, and apply "
        f"keras.ops.softmax to its predictions at inference{other_fix}."
    )


def check_label_spaces(terms, teachers, teacher_shapes, student_shapes):
    """Refuses logit terms between teachers and student of other classes."""
    num_classes = student_shapes["logits"][-1]
    for term in terms:
        if not term.uses_logits:
            continue
        for model, shapes in zip(teachers, teacher_shapes):
            shape = shapes.get("logits") or shapes.get("probabilities")
            # A token record's top-k targets: its recorded vocabulary size.
            teacher_classes = shape[-1] if shape else model.num_classes
            # A term with `class_indices` compares the teacher's scores
            # of those classes, in order, with the student's.
            if getattr(term, "class_indices", None) is not None:
                _check_class_indices(term, model, shapes, num_classes)
            elif teacher_classes != num_classes:
                raise ValueError(
                    f"{type(term).__name__} compares class scores, but "
                    f"teacher '{model.name}' has {teacher_classes} "
                    f"classes and the student {num_classes}. Use feature "
                    f"terms only (e.g. kd.losses.FeatureAlignment) when "
                    f"the label spaces differ."
                )


def input_shape(model):
    """The shape of a model's single symbolic input, or `None`."""
    inputs = getattr(model, "inputs", None) if isinstance(model, keras.Model) else None
    if inputs and len(inputs) == 1:
        return tuple(inputs[0].shape)
    return None


class _LogitsTap:
    """Runs a subclassed model that returns its logits as `{"logits": ...}`."""

    def __init__(self, model):
        self.model = model

    def __call__(self, inputs, training=None):
        return {"logits": self.model(inputs, training=training)}


def _symbolic_outputs(model):
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return None
    return outputs if inputs is not None else None


def _from_logits(loss):
    return getattr(loss, "from_logits", False) is True


def _check_class_indices(term, model, shapes, num_classes):
    indices = list(term.class_indices)
    if "logits" not in shapes:
        raise ValueError(
            f"{type(term).__name__} restricts a teacher's logits to "
            f"class_indices, but '{model.name}' is a label teacher that is "
            f"fed the student's labels. Use a trained teacher model."
        )
    teacher_classes = shapes["logits"][-1]
    if len(indices) != num_classes:
        raise ValueError(
            f"{type(term).__name__} has {len(indices)} class_indices but the "
            f"student has {num_classes} classes; give one teacher class per "
            f"student class, in the student's label order (e.g. "
            f"mapping.original_ids from kd.data.class_subset)."
        )
    bad = [i for i in indices if not 0 <= i < teacher_classes]
    if bad:
        raise ValueError(
            f"class_indices {bad} are out of range for teacher "
            f"'{model.name}', which has {teacher_classes} classes "
            f"(0..{teacher_classes - 1})."
        )


def _check_names(names, available, role, model, kind):
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(
            f"The {role} model '{model.name}' has no {kind} named "
            f"{', '.join(repr(n) for n in missing)}. Available {kind}s: "
            f"{available}."
        )
