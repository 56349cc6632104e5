"""Export a distilled student to TensorFlow SavedModel and TFLite (LiteRT).

Every artefact is reloaded right after it is written and run on
`sample_inputs`; the largest absolute difference from the Keras model is
reported and checked against a tolerance, so a broken conversion fails at
export time instead of on the device.

Tolerances (relative to the scale of the reference outputs,
`scale = max|outputs|`, with an absolute floor of 1e-6):

- float32 artefacts (SavedModel, TFLite without quantisation): `1e-4 · scale`.
- `tflite_quantization="float16"` (float16 weights): `1e-2 · scale`.
- `"dynamic_range"` and `"int8"`: no elementwise bound (int8 rounding moves
  logits by a few percent); instead the top-1 agreement with the Keras model
  on `sample_inputs` must reach `min_top1_agreement` (default 0.9).

Mixed-precision students (`mixed_float16` / `mixed_bfloat16`) keep their
policy in the SavedModel. The TFLite interpreter has no float16 kernels for
ops such as `Conv2D` (they would become Flex ops it cannot run), so the TFLite
graph is traced with float32 compute (the variables are float32 already) and
its parity is checked against the Keras model run with float32 compute; the
top-1 agreement with the model as trained (mixed compute) is reported too.
Use `tflite_quantization="float16"` for a float16 TFLite model.

Backends: TensorFlow exports both formats. On JAX, Keras writes the
SavedModel through `jax2tf` (checked the same way), but TFLite export raises
an error that says to export under `KERAS_BACKEND=tensorflow`: converting the
jax2tf SavedModel gave a model 2.5x larger (resource variables, un-fused
batch norm, shape-polymorphism ops) whose `"int8"` conversion left float ops
in place.
"""

import os
import warnings

import keras
import numpy as np
from keras import tree

from keras_kd import _compat
from keras_kd import tflite

FORMATS = ("saved_model", "tflite")
TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_range", "int8")
FLOAT32_RTOL = 1e-4
FLOAT16_RTOL = 1e-2
DEFAULT_MIN_TOP1_AGREEMENT = 0.9
# Samples given to the int8 converter's calibration (representative dataset).
NUM_CALIBRATION_SAMPLES = 200
_ABS_FLOOR = 1e-6
_BATCH_SIZE = 256


class ExportParityError(RuntimeError):
    """An exported artefact's outputs differ from the Keras model's."""


def export(
    model,
    output_dir,
    formats=("saved_model", "tflite"),
    sample_inputs=None,
    tflite_quantization=None,
    sample_labels=None,
    rtol=None,
    min_top1_agreement=DEFAULT_MIN_TOP1_AGREEMENT,
):
    """Exports `model` and checks each artefact against it on `sample_inputs`.

    Args:
        model: a built `keras.Model` (the student), or a `keras_kd.Distiller`
            whose `student` is exported (teachers and aligners are training
            only and are not exported).
        output_dir: directory for the artefacts (created if missing):
            `saved_model/` and `model.tflite` (`model_<quantization>.tflite`
            when quantised).
        formats: any of `"saved_model"`, `"tflite"`.
        sample_inputs: a batch shaped like the model's input (or a dict of
            batches for a dict-input model) for the parity check and the int8
            calibration. `None` uses 8 standard-normal samples, which checks
            the conversion but says nothing about quantised accuracy; `"int8"`
            requires real samples.
        tflite_quantization: `None` (float32), `"float16"` (float16 weights),
            `"dynamic_range"` (int8 weights, float activations) or `"int8"`
            (int8 weights and activations, calibrated on up to 200 of
            `sample_inputs`; float32 input and output).
        sample_labels: optional integer labels for `sample_inputs`; adds the
            `accuracy` of each artefact and of the Keras model (`keras_accuracy`).
        rtol: overrides the relative tolerance on the max abs difference
            (default 1e-4 for float32, 1e-2 for float16 weights).
        min_top1_agreement: lowest top-1 agreement with the Keras model
            accepted for `"dynamic_range"` and `"int8"` models.

    Returns:
        A dict keyed by format, e.g. `{"saved_model": {"path", "max_abs_diff",
        "tolerance", "size_bytes"}, "tflite": {"path", "max_abs_diff",
        "tolerance", "size_bytes", "quantization", "top1_agreement"}}`;
        quantised TFLite entries add `quantized_tensors`, the number of
        int8/float16 tensors in the file (the converter skips weights with
        fewer than 1024 elements, and warns here when none was quantised).
        `top1_agreement` (fraction of `sample_inputs` on which the artefact's
        argmax equals the Keras model's) is given for classifier outputs.

    Raises:
        ExportParityError: an artefact's outputs are outside the tolerance
            (the artefact is left in `output_dir` for inspection).

    Example:

    ```python
    distiller.fit(x_train, y_train, epochs=10)
    report = keras_kd.export.export(
        distiller.student, "exported", sample_inputs=x_test[:256],
        tflite_quantization="float16", sample_labels=y_test[:256])
    report["tflite"]["max_abs_diff"], report["tflite"]["top1_agreement"]
    ```
    """
    model = _student_of(model)
    formats = _check_formats(formats, tflite_quantization)
    _check_exportable(model, formats)
    output_dir = _check_output_dir(output_dir)
    sample_inputs, sample_labels = _samples(
        model, sample_inputs, sample_labels, tflite_quantization
    )
    os.makedirs(output_dir, exist_ok=True)
    reference = _keras_outputs(model, sample_inputs)
    results = {}
    if "saved_model" in formats:
        results["saved_model"] = _export_saved_model(
            model, output_dir, sample_inputs, sample_labels, reference, rtol
        )
    if "tflite" in formats:
        results["tflite"] = _export_checked_tflite(
            model,
            output_dir,
            tflite_quantization,
            sample_inputs,
            sample_labels,
            reference,
            rtol,
            min_top1_agreement,
        )
    return results


def _check_exportable(model, formats):
    """Checks that `model` is built and that the backend writes `formats`
    (TensorFlow every format, JAX only the SavedModel)."""
    backend = keras.backend.backend()
    if backend != "tensorflow" and (backend != "jax" or "tflite" in formats):
        what = "TFLite export" if backend == "jax" else "keras_kd.export"
        hint = " (formats=('saved_model',) works on JAX)" if backend == "jax" else ""
        raise RuntimeError(
            f"{what} needs the TensorFlow backend; the active backend is "
            f"{backend!r}. Save the model (`model.save('student.keras')`) and "
            f"export it in a process started with KERAS_BACKEND=tensorflow"
            f"{hint}."
        )
    _check_built(model)


def _check_output_dir(output_dir):
    output_dir = os.fspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(
            f"output_dir={output_dir!r} is an existing file; pass a directory "
            f"path (it is created if missing)."
        )
    return output_dir


def _samples(model, sample_inputs, sample_labels, tflite_quantization):
    """float32 `sample_inputs` (random ones by default) and flat labels."""
    if tflite_quantization == "int8" and sample_inputs is None:
        raise ValueError(
            "tflite_quantization='int8' calibrates activation ranges on "
            "sample_inputs; pass a batch of real inputs (a few hundred "
            "samples), or use 'dynamic_range', which needs no data."
        )
    if sample_inputs is None:
        sample_inputs = _random_inputs(model)
    sample_inputs = tree.map_structure(
        lambda x: np.asarray(x, dtype="float32"), sample_inputs
    )
    if sample_labels is not None:
        sample_labels = np.asarray(sample_labels).reshape(-1)
    return sample_inputs, sample_labels


def _export_saved_model(model, output_dir, inputs, labels, reference, rtol):
    """Writes, reloads and checks the SavedModel; returns its report entry."""
    path = os.path.join(output_dir, "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    outputs = _run_saved_model(path, inputs)
    entry = {"path": path, "size_bytes": _size(path)}
    entry.update(
        _compare(
            "SavedModel",
            path,
            reference,
            outputs,
            FLOAT32_RTOL if rtol is None else rtol,
        )
    )
    _add_classifier_metrics(entry, reference, outputs, labels)
    return entry


def _export_checked_tflite(
    model, output_dir, quantization, inputs, labels, reference, rtol, min_top1_agreement
):
    """Writes, reloads and checks the TFLite model; returns its report entry."""
    suffix = f"_{quantization}" if quantization else ""
    path = os.path.join(output_dir, f"model{suffix}.tflite")
    mixed = _mixed_precision_layers(model)
    with _float32_compute(mixed):
        tflite.convert(
            model,
            path,
            quantization,
            inputs,
            min(NUM_CALIBRATION_SAMPLES, _num_samples(inputs)),
        )
        tflite_reference = _keras_outputs(model, inputs) if mixed else reference
    outputs = tflite.run(path, inputs)
    entry = {
        "path": path,
        "size_bytes": os.path.getsize(path),
        "quantization": quantization,
    }
    if quantization is not None:
        entry["quantized_tensors"] = tflite.quantized_tensor_count(path)
        _warn_if_unquantized(entry["quantized_tensors"], quantization, path)
    if quantization in (None, "float16"):
        default = FLOAT32_RTOL if quantization is None else FLOAT16_RTOL
        entry.update(
            _compare(
                "TFLite",
                path,
                tflite_reference,
                outputs,
                default if rtol is None else rtol,
            )
        )
    else:
        entry["max_abs_diff"] = _max_abs_diff(tflite_reference, outputs)
        entry["tolerance"] = None
    # Agreement is measured against the model as trained (mixed compute).
    _add_classifier_metrics(entry, reference, outputs, labels)
    if quantization in ("dynamic_range", "int8"):
        _check_top1_agreement(entry, quantization, path, min_top1_agreement)
    return entry


def _warn_if_unquantized(quantized_tensors, quantization, path):
    if quantized_tensors == 0:
        warnings.warn(
            f"tflite_quantization={quantization!r} left every "
            f"tensor of {path} in float32: the TFLite converter only "
            f"quantises weight tensors with at least 1024 elements "
            f"(and 'int8' needs int8 kernels). The model is exported "
            f"unquantised.",
            # Attributed to the caller of `export`.
            stacklevel=4,
        )


def _check_top1_agreement(entry, quantization, path, min_top1_agreement):
    agreement = entry.get("top1_agreement")
    if agreement is not None and agreement < min_top1_agreement:
        raise ExportParityError(
            f"The {quantization} TFLite model at {path} agrees "
            f"with the Keras model's top-1 prediction on only "
            f"{agreement:.3f} of sample_inputs (< min_top1_agreement="
            f"{min_top1_agreement}). Pass more representative "
            f"sample_inputs, or use tflite_quantization='float16' or "
            f"'dynamic_range'."
        )


def _student_of(model):
    from keras_kd.distiller import Distiller

    if isinstance(model, Distiller):
        return model.student
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"export() takes a keras.Model or a keras_kd.Distiller; got "
            f"{type(model).__name__}."
        )
    return model


def _check_formats(formats, tflite_quantization):
    """Returns `formats` as a tuple, after checking it and the quantisation."""
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            f"Unknown export format(s) {unknown or list(formats)}. Valid "
            f"formats: {', '.join(repr(f) for f in FORMATS)}."
        )
    if tflite_quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(
            f"Unknown tflite_quantization={tflite_quantization!r}. Valid "
            f"values: {', '.join(repr(q) for q in TFLITE_QUANTIZATIONS)}."
        )
    return tuple(formats)


def _check_built(model):
    if not model.built or not _has_input_shape(model):
        raise ValueError(
            f"Model {model.name!r} is not built, so its input signature is "
            f"unknown. Call it on a batch (`model(x[:1])`) or "
            f"`model.build(input_shape)` before exporting."
        )


def _has_input_shape(model):
    try:
        _compat.get_input_signature(model)
        return True
    except ValueError:
        return False


def _random_inputs(model):
    rng = np.random.default_rng(0)

    def sample(spec):
        shape = [8] + [d if d is not None else 1 for d in spec.shape[1:]]
        return rng.standard_normal(shape).astype("float32")

    signature = _compat.get_input_signature(model)
    structure = signature[0] if len(signature) == 1 else signature
    return tree.map_structure(sample, structure)


def _num_samples(inputs):
    return tree.flatten(inputs)[0].shape[0]


def _named_outputs(outputs):
    """Flattens an output structure to {name: np.ndarray} (TFLite's names)."""
    if isinstance(outputs, dict):
        return {
            k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in outputs.items()
        }
    flat = tree.flatten(outputs)
    return {
        f"output_{i}": np.asarray(keras.ops.convert_to_numpy(v))
        for i, v in enumerate(flat)
    }


def _keras_outputs(model, inputs):
    """Runs the model eagerly in batches (not `predict`: its traced function
    is cached and would ignore a temporary dtype-policy change)."""
    n = _num_samples(inputs)
    batches = []
    for start in range(0, n, _BATCH_SIZE):
        batch = tree.map_structure(lambda x: x[start : start + _BATCH_SIZE], inputs)
        batches.append(_named_outputs(model(batch, training=False)))
    return {
        k: np.concatenate([b[k] for b in batches]).astype("float32") for k in batches[0]
    }


def _run_saved_model(path, inputs):
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = tf.saved_model.load(path)
    n = _num_samples(inputs)
    batches = []
    for start in range(0, n, _BATCH_SIZE):
        batch = tree.map_structure(lambda x: x[start : start + _BATCH_SIZE], inputs)
        batches.append(_named_outputs(reloaded.serve(batch)))
    return {
        k: np.concatenate([b[k] for b in batches]).astype("float32") for k in batches[0]
    }


def _max_abs_diff(reference, outputs):
    if sorted(reference) != sorted(outputs):
        raise ExportParityError(
            f"The artefact's outputs {sorted(outputs)} do not match the "
            f"Keras model's outputs {sorted(reference)}."
        )
    return float(max(np.max(np.abs(reference[k] - outputs[k])) for k in reference))


def _compare(kind, path, reference, outputs, rtol):
    diff = _max_abs_diff(reference, outputs)
    scale = float(max(np.max(np.abs(v)) for v in reference.values()))
    tolerance = rtol * scale + _ABS_FLOOR
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportParityError(
            f"The {kind} at {path} differs from the Keras model by up to "
            f"{diff:.3g} on sample_inputs (tolerance {tolerance:.3g} = "
            f"{rtol:g} x output scale {scale:.3g}). The conversion changed "
            f"the model's computation; check for training-only layers or "
            f"ops the converter rewrites."
        )
    return {"max_abs_diff": diff, "tolerance": tolerance}


def _classifier_output(outputs):
    if "logits" in outputs:
        return outputs["logits"]
    if len(outputs) == 1:
        value = next(iter(outputs.values()))
        if value.ndim == 2 and value.shape[-1] > 1:
            return value
    return None


def _add_classifier_metrics(entry, reference, outputs, labels):
    keras_logits = _classifier_output(reference)
    logits = _classifier_output(outputs)
    if keras_logits is None or logits is None:
        return
    predictions = logits.argmax(-1)
    entry["top1_agreement"] = float(np.mean(predictions == keras_logits.argmax(-1)))
    if labels is not None:
        if labels.shape[0] != predictions.shape[0]:
            raise ValueError(
                f"sample_labels has {labels.shape[0]} labels for "
                f"{predictions.shape[0]} sample_inputs."
            )
        entry["accuracy"] = float(np.mean(predictions == labels))
        entry["keras_accuracy"] = float(np.mean(keras_logits.argmax(-1) == labels))


def _mixed_precision_layers(model):
    return [
        layer
        for layer in _compat.flatten_layers(model)
        if layer.dtype_policy.name.startswith("mixed")
    ]


class _float32_compute:
    """Temporarily gives mixed-precision layers the float32 policy (their
    variables are float32 already), restoring the policies on exit."""

    def __init__(self, layers):
        self.layers = layers
        self.policies = [layer.dtype_policy for layer in layers]

    def __enter__(self):
        for layer in self.layers:
            layer.dtype_policy = "float32"

    def __exit__(self, *exc_info):
        for layer, policy in zip(self.layers, self.policies):
            layer.dtype_policy = policy


def _size(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
