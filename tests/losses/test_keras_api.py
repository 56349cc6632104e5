"""`kd.losses.LogitsDistillation` / `FeatureDistillation` as loss objects:
the `keras.distillation` methods, against Keras' objects and NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(z_t, z_s, t):
    """Hinton's T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch mean."""
    log_p = np_log_softmax(z_t / t)
    kl = (np.exp(log_p) * (log_p - np_log_softmax(z_s / t))).sum(-1)
    return t * t * kl.mean()


def logits(seed, n=6, classes=5):
    return np.random.default_rng(seed).normal(size=(n, classes)).astype("float32") * 3


def value(x):
    return float(ops.convert_to_numpy(x))


def test_logits_compute_loss_is_the_batch_mean_of_hinton_kd():
    z_t, z_s = logits(0), logits(1)
    ours = kd.losses.LogitsDistillation(temperature=4.0)
    expected = np_kd(z_t, z_s, 4.0)
    got = value(ours.compute_loss(z_t, z_s))
    # Keras' object applies the softmax for a KLDivergence instance (its
    # default "kl_divergence" resolves to the function, which reads the
    # tempered logits as probabilities).
    keras_value = value(
        keras.distillation.LogitsDistillation(
            temperature=4.0, loss=keras.losses.KLDivergence()
        ).compute_loss(z_t, z_s)
    )
    keras_default = value(
        keras.distillation.LogitsDistillation(temperature=4.0).compute_loss(z_t, z_s)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Keras clips probabilities at 1e-7; on these logits it agrees closely.
    np.testing.assert_allclose(got, keras_value, rtol=1e-4)
    assert abs(keras_default - expected) > 0.1


@pytest.mark.parametrize("nest", ["list", "dict"])
def test_logits_compute_loss_sums_nested_outputs(nest):
    z_t = [logits(0), logits(2, classes=3)]
    z_s = [logits(1), logits(3, classes=3)]
    if nest == "dict":
        z_t, z_s = dict(zip("ab", z_t)), dict(zip("ab", z_s))
        keras_loss = {
            "a": keras.losses.KLDivergence(),
            "b": keras.losses.KLDivergence(),
        }
    else:
        keras_loss = [keras.losses.KLDivergence(), keras.losses.KLDivergence()]
    pairs = zip(keras.tree.flatten(z_t), keras.tree.flatten(z_s))
    expected = sum(np_kd(t, s, 2.0) for t, s in pairs)
    got = value(kd.losses.LogitsDistillation(2.0).compute_loss(z_t, z_s))
    reference = value(
        keras.distillation.LogitsDistillation(
            temperature=2.0, loss=keras_loss
        ).compute_loss(z_t, z_s)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got, reference, rtol=1e-4)


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_feature_compute_loss_equals_keras(loss):
    rng = np.random.default_rng(0)
    f_t, f_s = (rng.normal(size=(4, 3, 3, 2)).astype("float32") for _ in range(2))
    diff = f_s - f_t
    expected = np.mean(diff**2 if loss == "mse" else np.abs(diff))
    got = value(kd.losses.FeatureDistillation(loss=loss).compute_loss(f_t, f_s))
    reference = value(
        keras.distillation.FeatureDistillation(loss=loss).compute_loss(f_t, f_s)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    nested = kd.losses.FeatureDistillation(loss=loss).compute_loss(
        [f_t, f_t], [f_s, f_t]
    )
    np.testing.assert_allclose(value(nested), expected, rtol=1e-5)


def test_validate_outputs_raises_on_mismatch():
    kd_loss = kd.losses.LogitsDistillation()
    kd_loss.validate_outputs(logits(0), logits(1))
    with pytest.raises(ValueError, match="different structures"):
        kd_loss.validate_outputs([logits(0)], [logits(0), logits(1)])
    with pytest.raises(ValueError, match="teacher has 5 classes and the student 3"):
        kd_loss.validate_outputs(logits(0), logits(1, classes=3))
    with pytest.raises(ValueError, match="features of the same shape"):
        kd.losses.FeatureDistillation().validate_outputs(
            np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 2))
        )


def _model(name, classes=10):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    return keras.Model(
        inputs, keras.layers.Dense(classes, name="out")(hidden), name=name
    )


def test_validate_model_compatibility():
    teacher, student = _model("t"), _model("s")
    kd.losses.LogitsDistillation().validate_model_compatibility(teacher, student)
    kd.losses.FeatureDistillation("hidden", "hidden").validate_model_compatibility(
        teacher, student
    )
    with pytest.raises(ValueError, match="teacher has 10 classes and the student 3"):
        kd.losses.LogitsDistillation().validate_model_compatibility(
            teacher, _model("s3", classes=3)
        )
    with pytest.raises(ValueError, match="no layer named 'conv'"):
        kd.losses.FeatureDistillation("hidden", "conv").validate_model_compatibility(
            teacher, student
        )
    # keras.distillation's object refuses the same missing layer.
    with pytest.raises(ValueError, match="conv"):
        keras.distillation.FeatureDistillation(
            teacher_layer_name="hidden", student_layer_name="conv"
        ).validate_model_compatibility(teacher, student)
