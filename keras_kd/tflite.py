"""TFLite (LiteRT) files: convert a Keras model, run one, count its
quantised tensors. `kd.export` checks their parity with the Keras model."""

import warnings

import numpy as np
from keras import tree


def _converter_kwargs(quantization, inputs, calibration_samples):
    import tensorflow as tf

    if quantization is None:
        # Builtin ops only: the artefact must run on a plain LiteRT runtime.
        return {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    kwargs = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantization == "float16":
        kwargs["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS],
            "supported_types": [tf.float16],
        }
    elif quantization == "dynamic_range":
        kwargs["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    else:  # int8
        count = calibration_samples

        def representative_dataset():
            for i in range(count):
                sample = tree.map_structure(lambda x: x[i : i + 1], inputs)
                yield sample if isinstance(sample, dict) else tree.flatten(sample)

        kwargs["representative_dataset"] = representative_dataset
        kwargs["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
    return kwargs


def convert(model, path, quantization, inputs, calibration_samples):
    """Writes `model` to the `.tflite` file `path`, builtin ops only.

    `quantization` is None, "float16", "dynamic_range" or "int8" (calibrated
    on the first `calibration_samples` of `inputs`).

    Example:

    ```python
    tflite.convert(student, "student.tflite", None, x[:8], 0)
    outputs = tflite.run("student.tflite", x[:8])
    ```
    """
    kwargs = _converter_kwargs(quantization, inputs, calibration_samples)
    try:
        model.export(path, format="litert", verbose=False, **kwargs)
    except Exception as e:
        hint = (
            " Full-integer quantisation needs an int8 kernel for every op; "
            "try tflite_quantization='dynamic_range'."
            if quantization == "int8"
            else ""
        )
        raise RuntimeError(
            f"TFLite conversion of model {model.name!r} failed "
            f"(tflite_quantization={quantization!r}): {e}.{hint}"
        ) from e


def _interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that it moves to ai_edge_litert.
        warnings.simplefilter("ignore")
        return Interpreter(model_path=path)


def quantized_tensor_count(path):
    """How many int8 or float16 tensors the `.tflite` file holds."""
    details = _interpreter(path).get_tensor_details()
    return sum(d["dtype"] in (np.int8, np.float16) for d in details)


def run(path, inputs):
    """The `.tflite` model's outputs on `inputs`: `{name: float32 array}`."""
    interpreter = _interpreter(path)
    signatures = interpreter.get_signature_list()
    key = (
        "serving_default" if "serving_default" in signatures else next(iter(signatures))
    )
    names = signatures[key]["inputs"]
    runner = interpreter.get_signature_runner(key)
    if isinstance(inputs, dict):
        if sorted(inputs) != sorted(names):
            raise ValueError(
                f"sample_inputs keys {sorted(inputs)} do not match the TFLite "
                f"model's inputs {sorted(names)}."
            )
        feed = inputs
    else:
        flat = tree.flatten(inputs)
        if len(flat) != len(names):
            raise ValueError(
                f"The TFLite model has {len(names)} inputs {names}; pass "
                f"sample_inputs as a dict keyed by these names."
            )
        feed = dict(zip(names, flat))
    outputs = runner(**feed)
    return {k: np.asarray(v, dtype="float32") for k, v in outputs.items()}
