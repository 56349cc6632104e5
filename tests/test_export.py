"""SavedModel / TFLite export of a trained digits student, checked against
independent reloads of the artefacts on the real digits test images.

TensorFlow backend (the module is not multi_backend); the JAX error is
checked in a subprocess.
"""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_cnn
from helpers import sparse_ce

import keras_kd as kd

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="export runs under the TensorFlow backend",
)


@pytest.fixture(scope="module")
def student(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    model = kd.models.digits_cnn_small()
    model.compile(keras.optimizers.Adam(1e-2), sparse_ce(), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=12, batch_size=64, verbose=0)
    return model


def keras_logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False)).astype("float32")


def run_tflite(path, x):
    """Runs a .tflite file with the plain interpreter, batch by batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(input_detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(output_detail["index"]), interpreter


def test_float32_saved_model_and_tflite_match_keras(student, digits, tmp_path):
    _, x_test, _, y_test = digits
    report = kd.export.export(
        student, tmp_path / "out", sample_inputs=x_test, sample_labels=y_test
    )
    assert set(report) == {"saved_model", "tflite"}
    expected = keras_logits(student, x_test)
    scale = np.abs(expected).max()
    keras_accuracy = np.mean(expected.argmax(-1) == y_test)
    assert keras_accuracy > 0.85

    reloaded = tf.saved_model.load(report["saved_model"]["path"])
    saved_diff = np.abs(reloaded.serve(x_test).numpy() - expected).max()
    tflite, _ = run_tflite(report["tflite"]["path"], x_test)
    tflite_diff = np.abs(tflite - expected).max()
    for entry, diff in [
        (report["saved_model"], saved_diff),
        (report["tflite"], tflite_diff),
    ]:
        assert diff <= 1e-4 * scale
        np.testing.assert_allclose(entry["max_abs_diff"], diff, atol=1e-7)
        np.testing.assert_allclose(entry["tolerance"], 1e-4 * scale + 1e-6, rtol=1e-5)
        assert entry["top1_agreement"] == 1.0
        np.testing.assert_allclose(entry["keras_accuracy"], keras_accuracy)
        np.testing.assert_allclose(entry["accuracy"], keras_accuracy)
    assert report["tflite"]["size_bytes"] == os.path.getsize(report["tflite"]["path"])
    assert report["tflite"]["path"].endswith("model.tflite")


def test_float16_tflite_within_looser_tolerance(student, digits, tmp_path):
    _, x_test, _, y_test = digits
    report = kd.export.export(
        student,
        tmp_path / "f16",
        formats=["tflite"],
        sample_inputs=x_test,
        tflite_quantization="float16",
        sample_labels=y_test,
    )["tflite"]
    expected = keras_logits(student, x_test)
    got, interpreter = run_tflite(report["path"], x_test)
    diff = np.abs(got - expected).max()
    np.testing.assert_allclose(report["max_abs_diff"], diff, atol=1e-7)
    # float16 weights: measurably different, within 1e-2 of the logits' scale.
    assert 1e-6 < diff <= 1e-2 * np.abs(expected).max()
    agreement = np.mean(got.argmax(-1) == expected.argmax(-1))
    assert agreement >= 0.98
    np.testing.assert_allclose(report["top1_agreement"], agreement)
    # (No size assertion: on this 1.2k-parameter student the DEQUANTIZE ops
    # outweigh the halved weights.)
    assert "float16" in {d["dtype"].__name__ for d in interpreter.get_tensor_details()}


def check_quantised(model, digits, tmp_path, quantization):
    _, x_test, _, y_test = digits
    report = kd.export.export(
        model,
        tmp_path,
        formats=("tflite",),
        sample_inputs=x_test,
        tflite_quantization=quantization,
        sample_labels=y_test,
    )["tflite"]
    expected = keras_logits(model, x_test)
    got, interpreter = run_tflite(report["path"], x_test)
    agreement = np.mean(got.argmax(-1) == expected.argmax(-1))
    np.testing.assert_allclose(report["top1_agreement"], agreement)
    np.testing.assert_allclose(
        report["max_abs_diff"], np.abs(got - expected).max(), atol=1e-7
    )
    assert agreement >= 0.95
    accuracy = np.mean(got.argmax(-1) == y_test)
    np.testing.assert_allclose(report["accuracy"], accuracy)
    assert accuracy >= report["keras_accuracy"] - 0.03
    int8 = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.int8]
    assert report["quantized_tensors"] == len(int8) > 0
    return report, interpreter


def test_int8_tflite_top1_agreement(student, digits, tmp_path):
    _, interpreter = check_quantised(student, digits, tmp_path, "int8")
    # Full-integer: the convolutions run on int8 tensors (float only at the
    # model's input and output).
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    conv_inputs = [
        op["inputs"][0]
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D"
    ]
    assert conv_inputs and all(details[i]["dtype"] == np.int8 for i in conv_inputs)


def test_dynamic_range_tflite(digits, tmp_path):
    x_train, x_test, y_train, _ = digits
    # The converter skips weight tensors under 1024 elements: every weight of
    # small_cnn(4) is smaller, so nothing is quantised, and export warns.
    keras.utils.set_random_seed(1)
    tiny = small_cnn(4)
    with pytest.warns(UserWarning, match="left every tensor .* in float32"):
        report = kd.export.export(
            tiny,
            tmp_path / "small",
            formats="tflite",
            sample_inputs=x_test,
            tflite_quantization="dynamic_range",
        )
    assert report["tflite"]["quantized_tensors"] == 0
    assert (
        report["tflite"]["max_abs_diff"]
        <= 1e-4 * np.abs(keras_logits(tiny, x_test)).max()
    )
    # A wider net (conv2: 3x3x16x32 = 4608 weights) gets int8 weights.
    keras.utils.set_random_seed(1)
    wider = small_cnn(16)
    wider.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    wider.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    check_quantised(wider, digits, tmp_path / "wider", "dynamic_range")


def test_mixed_precision_student_exports(student, digits, tmp_path):
    _, x_test, _, y_test = digits
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = kd.models.digits_cnn_small()
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(student.get_weights())
    assert mixed.get_layer("stem_conv").compute_dtype == "float16"
    report = kd.export.export(
        mixed, tmp_path, sample_inputs=x_test, sample_labels=y_test
    )
    # The model keeps its policy after export.
    assert mixed.get_layer("stem_conv").dtype_policy.name == "mixed_float16"

    mixed_logits = keras_logits(mixed, x_test)
    reloaded = tf.saved_model.load(report["saved_model"]["path"])
    saved = reloaded.serve(x_test).numpy().astype("float32")
    assert np.abs(saved - mixed_logits).max() <= 1e-4 * np.abs(mixed_logits).max()

    # TFLite computes in float32: it matches the float32 student (same
    # weights) and agrees with the mixed-precision model's predictions.
    float32_logits = keras_logits(student, x_test)
    tflite, _ = run_tflite(report["tflite"]["path"], x_test)
    assert np.abs(tflite - float32_logits).max() <= 1e-4 * np.abs(float32_logits).max()
    agreement = np.mean(tflite.argmax(-1) == mixed_logits.argmax(-1))
    assert agreement >= 0.98
    np.testing.assert_allclose(report["tflite"]["top1_agreement"], agreement)


def test_distiller_exports_its_student(student, digits, tmp_path):
    _, x_test, _, _ = digits
    teacher = kd.models.digits_cnn_small(num_classes=10)
    distiller = kd.Distiller(teacher, student, kd.losses.LogitsDistillation())
    report = kd.export.export(
        distiller, tmp_path, formats="saved_model", sample_inputs=x_test[:32]
    )
    reloaded = tf.saved_model.load(report["saved_model"]["path"])
    np.testing.assert_allclose(
        reloaded.serve(x_test[:32]).numpy(),
        keras_logits(student, x_test[:32]),
        atol=1e-5,
    )


def test_parity_failure_raises(student, digits, tmp_path):
    _, x_test, _, _ = digits
    # float16 weights move the logits by more than the 1e-6 floor left by rtol=0.
    with pytest.raises(
        kd.export.ExportParityError, match="differs from the Keras model"
    ):
        kd.export.export(
            student,
            tmp_path,
            formats="tflite",
            sample_inputs=x_test[:64],
            tflite_quantization="float16",
            rtol=0.0,
        )
    with pytest.raises(kd.export.ExportParityError, match="min_top1_agreement"):
        kd.export.export(
            student,
            tmp_path,
            formats="tflite",
            sample_inputs=x_test[:64],
            tflite_quantization="int8",
            min_top1_agreement=1.01,
        )


def test_bad_inputs(student, tmp_path):
    with pytest.raises(ValueError, match="Valid formats: 'saved_model', 'tflite'"):
        kd.export.export(student, tmp_path, formats=("onnx",))
    with pytest.raises(ValueError, match="Valid values: None, 'float16'"):
        kd.export.export(student, tmp_path, tflite_quantization="int4")
    with pytest.raises(ValueError, match="pass a batch of real inputs"):
        kd.export.export(student, tmp_path, tflite_quantization="int8")

    file_path = tmp_path / "a_file"
    file_path.write_text("")
    with pytest.raises(ValueError, match="is an existing file"):
        kd.export.export(student, file_path)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match=r"not built.*model.build\(input_shape\)"):
        kd.export.export(Subclassed(), tmp_path / "sub")
    with pytest.raises(TypeError, match="takes a keras.Model"):
        kd.export.export(keras.layers.Dense(3), tmp_path / "layer")


@pytest.mark.slow  # A fresh process importing TF and JAX: 10-40 s.
def test_jax_backend_error_names_the_fix(tmp_path):
    code = (
        "import keras, keras_kd as kd\n"
        "m = kd.models.digits_cnn_small()\n"
        "try:\n"
        f"    kd.export.export(m, {str(tmp_path)!r})\n"
        "except RuntimeError as e:\n"
        "    print('ERROR:', e)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ERROR: TFLite export needs the TensorFlow backend" in out.stdout, out.stderr
    assert "KERAS_BACKEND=tensorflow" in out.stdout
    assert not os.listdir(tmp_path)
