"""What a user switching from `keras.distillation` observes: the loss
metrics in training, validation and `evaluate`, `LogitsDistillation(loss=)`
and models built on the first batch; values against NumPy."""

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import small_cnn
from helpers import sparse_ce
from keras import ops

import keras_kd as kd

pytestmark = pytest.mark.multi_backend


def compiled(distiller):
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce(), metrics=["accuracy"]
    )
    return distiller


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype="float32"), rng.integers(0, 10, n)


def np_kd(z_t, z_s, t):
    p_t = numpy_softmax(z_t / t)
    return t * t * np.sum(p_t * (np.log(p_t) - numpy_log_softmax(z_s / t)), -1)


def np_ce(z, y):
    return -numpy_log_softmax(z)[np.arange(len(y)), y]


def value(x):
    return float(ops.convert_to_numpy(x))


def kd_fd_distiller(**kwargs):
    return compiled(
        kd.Distiller(
            small_cnn(8, name="t"),
            small_cnn(8, name="s"),
            [
                kd.losses.LogitsDistillation(temperature=2.0),
                kd.losses.FeatureDistillation("features", "features"),
            ],
            distillation_loss_weights=[0.7, 3.0],
            student_loss_weight=0.3,
            **kwargs,
        )
    )


def test_training_and_validation_report_keras_distillation_losses():
    keras.utils.set_random_seed(0)
    distiller = kd_fd_distiller()
    x, y = batch(32)
    x_val, y_val = batch(8, seed=1)
    history = distiller.fit(
        x, y, batch_size=16, epochs=1, validation_data=(x_val, y_val), verbose=0
    ).history
    names = ["total_loss", "student_loss", "distillation_loss"]
    names += ["logits_distillation", "feature_distillation", "loss", "accuracy"]
    assert set(history) == set(names) | {f"val_{name}" for name in names}
    for prefix in ("", "val_"):
        logs = {name: np.array(history[prefix + name]) for name in names}
        terms = 0.7 * logs["logits_distillation"] + 3.0 * logs["feature_distillation"]
        np.testing.assert_allclose(logs["distillation_loss"], terms, rtol=1e-5)
        total = 0.3 * logs["student_loss"] + 0.7 * logs["distillation_loss"]
        np.testing.assert_allclose(logs["total_loss"], total, rtol=1e-5)
        np.testing.assert_allclose(logs["loss"], logs["total_loss"], rtol=1e-5)
    # Validation ran after the epoch's steps: recompute it from the models.
    both = lambda m: keras.Model(m.inputs, [m.output, m.get_layer("features").output])
    z_t, f_t = (ops.convert_to_numpy(v) for v in both(distiller.teacher)(x_val))
    z_s, f_s = (ops.convert_to_numpy(v) for v in both(distiller.student)(x_val))
    expected = {
        "val_student_loss": np_ce(z_s, y_val).mean(),
        "val_logits_distillation": np_kd(z_t, z_s, 2.0).mean(),
        "val_feature_distillation": ((f_s - f_t) ** 2).mean(),
        "val_accuracy": np.mean(np.argmax(z_s, -1) == y_val),
    }
    for name, want in expected.items():
        np.testing.assert_allclose(
            history[name][0], want, rtol=1e-4, atol=1e-6, err_msg=name
        )


def test_evaluate_reports_losses_unless_evaluate_teacher_is_false():
    x, y = batch(16)
    distiller = kd_fd_distiller()
    student = distiller.student
    student.compile(loss=sparse_ce(), metrics=["accuracy"])
    alone = student.evaluate(x, y, verbose=0, return_dict=True)
    result = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == {
        "loss",
        "accuracy",
        "total_loss",
        "student_loss",
        "distillation_loss",
        "logits_distillation",
        "feature_distillation",
    }
    np.testing.assert_allclose(result["loss"], result["total_loss"], rtol=1e-6)
    np.testing.assert_allclose(result["student_loss"], alone["loss"], rtol=1e-5)
    np.testing.assert_allclose(result["accuracy"], alone["accuracy"])
    skip = kd_fd_distiller(evaluate_teacher=False)
    skip.set_weights(distiller.get_weights())
    result = skip.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == {"loss", "accuracy"}
    np.testing.assert_allclose(result["loss"], alone["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        skip.predict(x[:8], verbose=0), student.predict(x[:8], verbose=0), rtol=1e-6
    )


class _ReadsIndex(kd.losses.LogitsDistillation):
    """KD that also declares a side input, as CRD does."""

    side_inputs = ("example_index",)

    def call(self, teacher_outputs, student_outputs, side_inputs=None, **kwargs):
        return super().call(teacher_outputs, student_outputs, **kwargs)


def test_evaluate_teacher_defaults_off_where_evaluation_data_cannot_feed_it():
    t, s = small_cnn(8, name="t"), small_cnn(4, name="s")
    with pytest.raises(ValueError, match="evaluation batches do not carry"):
        kd.Distiller(t, s, _ReadsIndex(), evaluate_teacher=True)
    distiller = compiled(kd.Distiller(t, s, _ReadsIndex()))
    x, y = batch(8)
    result = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) == {"loss", "accuracy"}  # The student alone.


def test_keras_distillation_losses_are_accepted():
    x_train, y_train = batch(64)
    distiller = compiled(
        kd.Distiller(
            small_cnn(8, name="t"),
            small_cnn(8, name="s"),
            [
                keras.distillation.LogitsDistillation(temperature=3.0),
                keras.distillation.FeatureDistillation(
                    teacher_layer_name="stage2", student_layer_name="stage2"
                ),
            ],
        )
    )
    history = distiller.fit(
        x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0
    )
    assert {"keras_distillation_loss_0", "keras_distillation_loss_1"} <= set(
        history.history
    )


@pytest.mark.parametrize(
    "loss", ["kl_divergence", "kld", "keras_kl", "mse", "keras_ce", "function"]
)
def test_logits_distillation_loss_argument(loss):
    rng = np.random.default_rng(0)
    z_t, z_s = rng.normal(size=(2, 6, 5)).astype("float32") * 3
    keras_loss = {
        "keras_kl": keras.losses.KLDivergence(),
        "keras_ce": keras.losses.CategoricalCrossentropy(from_logits=True),
        "function": keras.losses.mean_absolute_error,
    }.get(loss, loss)
    term = kd.losses.LogitsDistillation(temperature=3.0, loss=keras_loss)
    restored = kd.losses.LogitsDistillation.from_config(term.get_config())
    assert restored.get_config() == term.get_config()
    got = value(term.compute_loss(z_t, z_s))
    np.testing.assert_allclose(value(restored.compute_loss(z_t, z_s)), got, rtol=1e-6)
    a, b = z_t / 3.0, z_s / 3.0
    expected = {
        "mse": ((a - b) ** 2).mean(),
        "function": np.abs(a - b).mean(),
        "keras_ce": -(a * numpy_log_softmax(b)).sum(-1).mean(),
    }.get(loss, np_kd(z_t, z_s, 3.0).mean())  # The KL names: Hinton's formula.
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if loss not in ("kl_divergence", "kld"):  # Keras reads those strings
        # as probabilities; elsewhere it computes the same number.
        reference = keras.distillation.LogitsDistillation(3.0, keras_loss)
        np.testing.assert_allclose(got, value(reference.compute_loss(z_t, z_s)), 1e-4)


def test_logits_distillation_other_loss_needs_teacher_logits():
    table = kd.SoftLabelTeacher(np.eye(10))
    with pytest.raises(ValueError, match="gives probabilities"):
        kd.Distiller(table, small_cnn(4), kd.losses.LogitsDistillation(loss="mse"))


class TinyNet(keras.Model):
    """A subclassed model, never called before the Distiller sees it."""

    def __init__(self, width, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="relu")
        self.out = keras.layers.Dense(classes)

    def call(self, x):
        return self.out(self.hidden(x))


def test_unbuilt_subclassed_models_are_built_on_the_first_batch():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 6), dtype="float32"), rng.integers(0, 10, 8)
    teacher, student = TinyNet(16, name="t"), TinyNet(4, name="s")
    distiller = compiled(
        kd.Distiller(teacher, student, kd.losses.LogitsDistillation(2.0))
    )
    assert not teacher.built and not student.built
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert teacher.built and student.built and not teacher.trainable_weights
    result = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    z_t, z_s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    np.testing.assert_allclose(
        result["logits_distillation"], np_kd(z_t, z_s, 2.0).mean(), rtol=1e-4
    )
    # The construction-time checks run on the first batch.
    mismatched = compiled(
        kd.Distiller(TinyNet(16), TinyNet(4, classes=3), kd.losses.LogitsDistillation())
    )
    with pytest.raises(ValueError, match="10 classes and the student 3"):
        mismatched.fit(x, y % 3, batch_size=4, epochs=1, verbose=0)
