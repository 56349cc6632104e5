"""CTKD against NumPy references of the paper and zhengli97/CTKD's code."""

import math

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import ops

import keras_kd as kd
from keras_kd.losses.curriculum_temperature import gradient_reversal

pytestmark = pytest.mark.multi_backend


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ctkd(z_t, z_s, theta, t_min=1.0, t_scale=20.0):
    """Per-sample T² · KL at T = t_min + t_scale · sigmoid(θ) (float64)."""
    t = t_min + t_scale / (1.0 + np.exp(-theta))
    log_t = np_log_softmax(z_t.astype("float64") / t)
    log_s = np_log_softmax(z_s.astype("float64") / t)
    return t * t * np.sum(np.exp(log_t) * (log_t - log_s), -1)


def np_cosine_decay(i, max_value=0.0, min_value=-1.0, loops=10):
    """CTKD's CosineDecay.get_value: the factor its reversal layer applies."""
    i = min(max(i, 0), loops)
    value = (math.cos(i * math.pi / loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value


def np_linear_decay(i, max_value=0.0, min_value=-1.0, loops=10):
    i = min(max(i, 0), loops - 1)
    return i * -((max_value - min_value) / loops)


def gradient(fn, variable):
    """d fn() / d variable on the current backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y = fn()
        return ops.convert_to_numpy(tape.gradient(y, variable.value))
    if backend == "jax":
        import jax

        def stateless(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return fn()

        return np.asarray(jax.grad(stateless)(variable.value))
    import torch

    return torch.autograd.grad(fn(), variable.value)[0].cpu().numpy()


def tensor_gradient(fn, x):
    """d fn(x) / d x for a tensor x."""
    variable = keras.Variable(x)
    return gradient(lambda: fn(variable.value), variable)


def logits(seed, n=16, c=10):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2, n, c)) * 3).astype("float32")


def built_term(**kwargs):
    term = kd.losses.CurriculumTemperatureDistillation(**kwargs)
    term.build([{"logits": (None, 10)}], {"logits": (None, 10)})
    return term


def call(term, z_t, z_s):
    return term(
        [{"logits": ops.convert_to_tensor(z_t)}],
        {"logits": ops.convert_to_tensor(z_s)},
        teacher_weights=[1.0],
    )


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_gradient_reversal_is_identity_with_gradient_minus_lambda(strength):
    x = np.array([0.5, -2.0, 3.0], "float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(gradient_reversal(ops.convert_to_tensor(x), strength)),
        x,
        rtol=1e-6,
    )
    grad = tensor_gradient(
        lambda v: ops.sum(ops.square(gradient_reversal(v, strength))), x
    )
    np.testing.assert_allclose(grad, -strength * 2 * x, rtol=1e-5, atol=1e-7)


def test_initial_temperature_and_loss_match_numpy():
    z_t, z_s = logits(0)
    term = built_term()
    # CTKD's Global_T starts at 1: T = 1 + 20 · sigmoid(1).
    np.testing.assert_allclose(
        float(term.current_temperature()), 1 + 20 / (1 + math.exp(-1)), rtol=1e-6
    )
    got = ops.convert_to_numpy(call(term, z_t, z_s))
    np.testing.assert_allclose(got, np_ctkd(z_t, z_s, 1.0), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "schedule,official", [("cosine", np_cosine_decay), ("linear", np_linear_decay)]
)
def test_lambda_curriculum_matches_official_decay(schedule, official):
    term = built_term(schedule=schedule)
    for epoch in range(0, 14):
        term.on_epoch_begin(epoch)
        # CTKD counts epochs from 1 and multiplies gradients by a value in
        # [0, −1]; our strength is its negation.
        np.testing.assert_allclose(
            float(term.reversal_strength()), -official(epoch + 1), atol=1e-6
        )


@pytest.mark.parametrize("epoch", [0, 4, 20])
def test_temperature_gradient_is_reversed_and_scaled_by_lambda(epoch):
    z_t, z_s = logits(1)
    theta = 0.4
    term = built_term(initial_value=theta)
    term.on_epoch_begin(epoch)
    strength = -np_cosine_decay(epoch + 1)
    got = gradient(lambda: ops.mean(call(term, z_t, z_s)), term.theta)
    h = 1e-4  # the un-reversed derivative, by central differences
    plain = (
        np_ctkd(z_t, z_s, theta + h).mean() - np_ctkd(z_t, z_s, theta - h).mean()
    ) / (2 * h)
    assert abs(plain) > 1e-4
    np.testing.assert_allclose(got, -strength * plain, rtol=2e-3, atol=1e-7)
    if strength > 0:
        assert np.sign(got) == -np.sign(plain)


def test_student_gradient_is_not_reversed():
    z_t, z_s = logits(2)
    term = built_term(lambda_start=1.0, lambda_end=1.0)
    grad = tensor_gradient(
        lambda v: ops.sum(
            term(
                [{"logits": ops.convert_to_tensor(z_t)}],
                {"logits": v},
                teacher_weights=[1.0],
            )
        ),
        z_s,
    )
    t = 1 + 20 / (1 + math.exp(-1))
    # d/dz_s of T² · KL(p_t ‖ softmax(z_s/T)) = T · (p_s − p_t).
    want = t * (np.exp(np_log_softmax(z_s / t)) - np.exp(np_log_softmax(z_t / t)))
    np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-6)


def test_instance_mode_gives_one_temperature_per_sample():
    z_t, z_s = logits(3)
    term = built_term(mode="instance", hidden_units=8)
    temperatures = ops.convert_to_numpy(term.current_temperature(z_t, z_s))
    assert temperatures.shape == (16, 1)
    assert np.all((temperatures > 1) & (temperatures < 21))
    got = ops.convert_to_numpy(call(term, z_t, z_s))
    assert got.shape == (16,)
    # Each sample's loss is plain KD at its own temperature.
    for i in (0, 7):
        t = temperatures[i, 0]
        theta = -math.log(20.0 / (t - 1.0) - 1.0)
        np.testing.assert_allclose(
            got[i], np_ctkd(z_t[i : i + 1], z_s[i : i + 1], theta)[0], rtol=1e-3
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_ctkd_mixed_precision_inputs_give_float32(dtype):
    z_t, z_s = logits(4)
    value = call(built_term(), ops.cast(z_t, dtype), ops.cast(z_s, dtype))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = lambda z: ops.convert_to_numpy(ops.cast(ops.cast(z, dtype), "float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(value),
        np_ctkd(rounded(z_t), rounded(z_s), 1.0),
        rtol=1e-3,
        atol=1e-5,
    )


def test_ctkd_rejects_bad_arguments_and_label_teachers():
    with pytest.raises(ValueError, match="mode"):
        kd.losses.CurriculumTemperatureDistillation(mode="batch")
    with pytest.raises(ValueError, match="schedule"):
        kd.losses.CurriculumTemperatureDistillation(schedule="step")
    with pytest.raises(ValueError, match="lambda_epochs"):
        kd.losses.CurriculumTemperatureDistillation(lambda_epochs=0)
    with pytest.raises(ValueError, match="SoftLabelTeacher"):
        kd.Distiller(
            kd.SoftLabelTeacher(np.eye(10)),
            small_cnn(4),
            kd.losses.CurriculumTemperatureDistillation(),
        )


def test_ctkd_config_round_trip():
    term = kd.losses.CurriculumTemperatureDistillation(
        mode="instance", lambda_epochs=5, schedule="linear", standardize=True
    )
    clone = type(term).from_config(term.get_config())
    assert clone.get_config() == term.get_config()


@pytest.mark.parametrize("mode", ["global", "instance"])
def test_ctkd_gradients_reach_student_and_temperature_not_teacher(
    digits, trained_teacher, mode
):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(3)
    student = small_cnn(4, name="student")
    term = kd.losses.CurriculumTemperatureDistillation(mode=mode, hidden_units=8)
    distiller = kd.Distiller(
        trained_teacher,
        student,
        term,
        distillation_loss_weights=[0.9],
        student_loss_weight=0.0,
        weighting="additive",
    )
    owned = [
        v
        for v in distiller.trainable_variables
        if any(v is w for w in term.trainable_variables)
    ]
    assert owned and not any(
        v is w for v in term.trainable_variables for w in student.weights
    )
    before_term = [ops.convert_to_numpy(v).copy() for v in term.trainable_variables]
    before_teacher = all_values(trained_teacher)
    before_student = trainable_values(student)
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    history = distiller.fit(
        x_train[:64], y_train[:64], epochs=2, batch_size=32, verbose=0
    ).history
    assert np.isfinite(history["total_loss"]).all()
    assert float(term.epoch) == 1.0
    # A zero CE weight: only the CTKD term's gradient moves the student.
    assert_all_moved(before_student, trainable_values(student))
    assert any(
        np.abs(ops.convert_to_numpy(v) - b).max() > 1e-4
        for v, b in zip(term.trainable_variables, before_term)
    )
    for w0, w1 in zip(before_teacher, trained_teacher.get_weights()):
        np.testing.assert_array_equal(w0, w1)
