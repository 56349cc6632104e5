"""The Distiller's training step, metrics and saving (its errors for bad
input: test_distiller_errors.py).

Marked multi_backend per test. The tests of what the Distiller builds from
its models (normalised teacher weights, one aligner per teacher, layers
found by name in Sequential models, a teacher with other classes) run on
TensorFlow only: model structure, the same on every backend. The step on
JAX is tested by the others (several teachers with an aligner each:
test_save_load_round_trip_and_continued_training)."""

import json

import keras
import numpy as np
import pytest
from helpers import DictStudent
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import small_cnn
from helpers import sparse_ce
from keras import ops

import keras_kd as kd

multi_backend = pytest.mark.multi_backend


def compiled(distiller, **kwargs):
    distiller.compile(
        optimizer=kwargs.pop("optimizer", keras.optimizers.Adam(1e-2)),
        loss=sparse_ce(),
        metrics=["accuracy"],
        **kwargs,
    )
    return distiller


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype="float32"), rng.integers(0, 10, n)


def weights_of(model):
    return [ops.convert_to_numpy(v).copy() for v in model.weights]


@multi_backend
@pytest.mark.parametrize("weighting", ["convex", "additive"])
def test_total_loss_matches_formula_with_sample_weight(weighting):
    teacher, student = small_cnn(8, name="t"), small_cnn(8, name="s")
    distiller = compiled(
        kd.Distiller(
            teacher,
            student,
            [
                kd.losses.LogitsDistillation(temperature=2.0),
                kd.losses.FeatureDistillation("features", "features"),
            ],
            distillation_loss_weights=[0.7, 3.0],
            student_loss_weight=0.3,
            weighting=weighting,
        )
    )
    x, y = batch()
    w = np.linspace(0.0, 2.0, len(y)).astype("float32")
    y_pred = distiller(x, training=True)
    loss = float(distiller.compute_loss(x, y, y_pred, sample_weight=w))

    z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
    z_t = ops.convert_to_numpy(y_pred["teachers"][0]["logits"])
    f_s = ops.convert_to_numpy(y_pred["student"]["features"])
    f_t = ops.convert_to_numpy(y_pred["teachers"][0]["features"])
    ce = -numpy_log_softmax(z_s)[np.arange(len(y)), y]
    p_t = numpy_softmax(z_t / 2.0)
    kl = 4.0 * np.sum(p_t * (np.log(p_t) - numpy_log_softmax(z_s / 2.0)), -1)
    mse = ((f_s - f_t) ** 2).mean(-1)
    terms = 0.7 * np.mean(kl * w) + 3.0 * np.mean(mse * w)
    scale = 0.7 if weighting == "convex" else 1.0
    expected = 0.3 * np.mean(ce * w) + scale * terms
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


class CountCalls(keras.layers.Layer):
    """Identity that counts its calls in training and in inference mode in
    two non-trainable variables: the step counts itself, eager or compiled
    (tracing it or building the model symbolically assigns nothing)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.training_calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="training_calls"
        )
        self.inference_calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="inference_calls"
        )

    def call(self, x, training=None):
        (self.training_calls if training else self.inference_calls).assign_add(1.0)
        return x

    def counts(self):
        """[calls in training mode, calls in inference mode] so far."""
        return [
            int(ops.convert_to_numpy(v))
            for v in (self.training_calls, self.inference_calls)
        ]


def counted_cnn(width, name):
    inputs = keras.Input((8, 8, 1))
    counter = CountCalls(name="counter")
    body = small_cnn(width, name=f"{name}_body")
    model = keras.Model(inputs, body(counter(inputs)), name=name)
    return model, counter, body


@multi_backend
def test_one_student_pass_and_teacher_in_inference_mode_per_step():
    teacher, teacher_counter, _ = counted_cnn(8, "teacher")
    student, student_counter, _ = counted_cnn(4, "student")
    # The counters count eager and compiled steps alike: eager on
    # TensorFlow (quicker than tracing the step), compiled elsewhere (an
    # eager JAX step compiles op by op).
    distiller = compiled(
        kd.Distiller(teacher, student, kd.losses.LogitsDistillation()),
        run_eagerly=keras.backend.backend() == "tensorflow",
    )
    x, y = batch(32)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 steps.
    assert student_counter.counts() == [4, 0]
    assert teacher_counter.counts() == [0, 4]
    distiller.evaluate(x, y, batch_size=8, verbose=0)
    assert student_counter.counts() == [4, 4]
    assert teacher_counter.counts() == [0, 8]  # For the evaluation losses.


@multi_backend
def test_fit_trains_student_and_aligners_not_teacher(digits):
    x_train, _, y_train, _ = digits
    teacher, student = small_cnn(16, name="t"), small_cnn(4, name="s")
    alignment = kd.losses.FeatureAlignment("stage2", "stage2")
    distiller = compiled(
        kd.Distiller(teacher, student, [kd.losses.LogitsDistillation(), alignment])
    )
    before_teacher = weights_of(teacher)
    before_student = weights_of(student)
    before_aligner = weights_of(alignment)
    history = distiller.fit(
        x_train[:256], y_train[:256], batch_size=64, epochs=1, verbose=0
    )
    for a, b in zip(before_teacher, weights_of(teacher)):
        np.testing.assert_array_equal(a, b)  # BN moving statistics included.
    changed = lambda before, model: [
        not np.array_equal(a, b) for a, b in zip(before, weights_of(model))
    ]
    assert all(changed(before_student, student))
    assert all(changed(before_aligner, alignment))
    assert {
        "student_loss",
        "logits_distillation",
        "feature_alignment",
        "total_loss",
    } <= set(history.history)
    assert len(student.weights) == len(small_cnn(4).weights)  # No aligner inside.


@multi_backend
@pytest.mark.slow
def test_digits_distillation_beats_student_alone(digits, trained_teacher):
    """KD from a trained teacher beats the same student trained alone.

    Same seeds (0-3), epochs (120), optimiser and data budget: the first 100
    training images (10 per class on average); the teacher (`small_cnn(32)`,
    98.0 % test accuracy on TF, 96.7 % on JAX) saw the whole training split,
    the student is `small_cnn(16)`. Mean test accuracy over the four seeds,
    measured on this machine (2 CPU cores):

    - TensorFlow: alone 0.814 (0.839/0.806/0.785/0.826), KD (T=4,
      student_loss_weight=0.5) 0.861 (0.865/0.861/0.869/0.850): +4.7 points;
    - JAX: alone 0.780 (0.746/0.789/0.776/0.807), KD 0.861
      (0.848/0.865/0.856/0.876): +8.1 points.

    Every distilled seed beat every student-alone seed on both backends. In
    the same regime a width-8 student gained nothing (KD -3.5 points at
    n=100): too small to fit the softened targets in 320 steps.
    """
    x_train, x_test, y_train, y_test = digits
    assert trained_teacher.evaluate(x_test, y_test, verbose=0)[1] > 0.95

    def accuracy(seed, distill):
        keras.utils.set_random_seed(seed)
        student = small_cnn(16, name="student")
        model = student
        if distill:
            model = kd.Distiller(
                trained_teacher,
                student,
                kd.losses.LogitsDistillation(temperature=4.0),
                student_loss_weight=0.5,
            )
        model.compile(keras.optimizers.Adam(3e-3), sparse_ce(), metrics=["accuracy"])
        model.fit(x_train[:100], y_train[:100], batch_size=32, epochs=120, verbose=0)
        return model.evaluate(x_test, y_test, verbose=0)[1]

    alone = np.mean([accuracy(seed, False) for seed in range(4)])
    distilled = np.mean([accuracy(seed, True) for seed in range(4)])
    assert distilled - alone > 0.02, (alone, distilled)


@multi_backend
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_student_with_float32_teacher(policy, digits):
    x_train, _, y_train, _ = digits
    teacher = small_cnn(8, name="t")
    keras.config.set_dtype_policy(policy)
    try:
        student = small_cnn(4, name="s")
    finally:
        keras.config.set_dtype_policy("float32")
    distiller = compiled(
        kd.Distiller(
            teacher,
            student,
            [
                kd.losses.LogitsDistillation(),
                kd.losses.FeatureAlignment("stage2", "stage2"),
            ],
        )
    )
    if policy == "mixed_float16":
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    y_pred = distiller(x_train[:8], training=True)
    assert (
        keras.backend.standardize_dtype(y_pred["student"]["stage2"].dtype) != "float32"
    )
    history = distiller.fit(
        x_train[:128], y_train[:128], batch_size=32, epochs=1, verbose=0
    )
    assert all(np.isfinite(v[-1]) for v in history.history.values())


def test_multi_teacher_one_aligner_per_teacher(digits):
    x_train, _, y_train, _ = digits
    teachers = [small_cnn(8, name="t1"), small_cnn(16, name="t2")]
    alignment = kd.losses.FeatureAlignment("stage2", "stage2")
    distiller = compiled(
        kd.Distiller(
            teachers,
            small_cnn(4, name="s"),
            [kd.losses.LogitsDistillation(), alignment],
            teacher_weights=[1.0, 3.0],
        )
    )
    assert distiller.teacher_weights == [0.25, 0.75]
    assert [a.layers[0].filters for a in alignment.aligners] == [16, 32]
    distiller.fit(x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0)
    assert all(not t.trainable for t in teachers)


def test_teacher_with_other_classes_for_feature_terms_only(digits):
    x_train, _, y_train, _ = digits
    teacher = small_cnn(8, num_classes=100, name="t")
    student = small_cnn(4, num_classes=10, name="s")
    with pytest.raises(ValueError, match="100 classes and the student 10"):
        kd.Distiller(teacher, student, kd.losses.LogitsDistillation())
    distiller = compiled(
        kd.Distiller(teacher, student, kd.losses.FeatureAlignment("stage2", "stage2"))
    )
    distiller.fit(x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0)


def test_sequential_models_work_by_layer_name(digits):
    x_train, _, y_train, _ = digits

    def sequential(width, name):
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(
                    width, 3, padding="same", activation="relu", name="conv"
                ),
                keras.layers.GlobalAveragePooling2D(name="pool"),
                keras.layers.Dense(10, name="out"),
            ],
            name=name,
        )

    distiller = compiled(
        kd.Distiller(
            sequential(16, "t"),
            sequential(4, "s"),
            [
                kd.losses.LogitsDistillation(),
                kd.losses.FeatureAlignment("conv", "conv"),
            ],
        )
    )
    history = distiller.fit(
        x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0
    )
    assert "feature_alignment" in history.history


@multi_backend
def test_subclassed_student_returning_a_dict(digits):
    x_train, _, y_train, _ = digits
    student = DictStudent()
    student(x_train[:1])
    distiller = kd.Distiller(
        small_cnn(8, name="t"),
        student,
        [kd.losses.LogitsDistillation(), kd.losses.FeatureAlignment("stage1", "conv")],
    )
    compiled(distiller)
    history = distiller.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    assert "feature_alignment" in history.history
    np.testing.assert_allclose(
        distiller.predict(x_train[:4], verbose=0),
        ops.convert_to_numpy(student(x_train[:4])["logits"]),
        rtol=1e-5,
        atol=1e-6,
    )


@multi_backend
def test_soft_label_teacher_trains_against_table_rows(digits):
    x_train, _, y_train, _ = digits
    rng = np.random.default_rng(0)
    table = numpy_softmax(rng.normal(size=(10, 10)) * 3).astype("float32")
    student = small_cnn(4, name="s")
    distiller = compiled(
        kd.Distiller(
            kd.SoftLabelTeacher(table),
            student,
            kd.losses.LogitsDistillation(temperature=5.0),
            student_loss_weight=0.0,
        )
    )
    x, y = x_train[:16], y_train[:16]
    y_pred = distiller(x, training=True)
    loss = float(distiller.compute_loss(x, y, y_pred))
    z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
    p = table[y]
    expected = 25.0 * np.mean(
        np.sum(p * (np.log(p) - numpy_log_softmax(z_s / 5.0)), -1)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    distiller.fit(x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0)


@multi_backend
def test_save_load_round_trip_and_continued_training(tmp_path, digits):
    x_train, x_test, y_train, _ = digits
    distiller = compiled(
        kd.Distiller(
            [small_cnn(8, name="t1"), small_cnn(8, name="t2")],
            small_cnn(4, name="s"),
            [
                kd.losses.LogitsDistillation(3.0),
                kd.losses.FeatureAlignment("stage2", "stage2"),
            ],
            distillation_loss_weights=[0.5, 2.0],
            teacher_weights=[1.0, 2.0],
            weighting="additive",
            student_loss_weight=1.0,
        )
    )
    distiller.fit(x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.models.load_model(path)
    as_json = lambda model: json.dumps(model.get_config(), sort_keys=True)
    assert as_json(restored) == as_json(distiller)
    np.testing.assert_array_equal(
        restored.predict(x_test[:16], verbose=0),
        distiller.predict(x_test[:16], verbose=0),
    )
    for model in (distiller, restored):
        model.fit(
            x_train[:64],
            y_train[:64],
            batch_size=32,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
    for a, b in zip(weights_of(distiller), weights_of(restored)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    student_path = str(tmp_path / "student.keras")
    distiller.student.save(student_path)
    student = keras.models.load_model(student_path)
    assert student.count_params() == distiller.student.count_params()
    np.testing.assert_allclose(
        student.predict(x_test[:16], verbose=0),
        distiller.predict(x_test[:16], verbose=0),
    )


class _LogOfNegative(kd.losses.LogitsDistillation):
    """KD plus `log(-1)`: a term that turns NaN, whatever the backend."""

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        loss = super().call(teacher_outputs, student_outputs, labels, teacher_weights)
        return loss + ops.log(-ops.ones_like(loss))


@multi_backend
def test_nan_loss_stops_training_naming_the_terms(digits):
    # A NaN pixel does not reach the loss on every backend (XLA's CPU ReLU
    # maps NaN to 0), so the term itself produces the NaN.
    x_train, _, y_train, _ = digits
    distiller = compiled(
        kd.Distiller(
            small_cnn(8, name="t"),
            small_cnn(4, name="s"),
            [kd.losses.LogitsDistillation(), _LogOfNegative(name="broken")],
        )
    )
    with pytest.raises(FloatingPointError, match="broken") as error:
        distiller.fit(x_train[:64], y_train[:64], batch_size=32, epochs=2, verbose=0)
    assert "logits_distillation'" not in str(error.value)
