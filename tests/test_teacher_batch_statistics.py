"""`kd.Distiller(teacher_batch_statistics=...)`: the teacher's BatchNorm on
the batch's statistics (OFD's official train-mode teacher), checked against
NumPy and Keras' own training-mode BatchNorm."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import small_cnn
from keras import ops

import keras_kd as kd
from keras_kd import batch_statistics

EPS = 1e-3  # keras.layers.BatchNormalization's default epsilon.


def bn_teacher(name="teacher", dropout=0.5):
    """conv → BN (non-trivial moving statistics) → ReLU → dropout → pool →
    dense, frozen weights set by seed."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn")
    bn.set_weights(
        [
            rng.uniform(0.5, 2.0, 6),  # gamma
            rng.normal(size=6),  # beta
            rng.normal(size=6) + 0.5,  # moving mean
            rng.uniform(2.0, 4.0, 6),  # moving variance
        ]
    )
    return model


def np_logits(teacher, x, batch_stats):
    """The teacher's logits in NumPy: BatchNorm on the batch's (biased)
    moments or on the moving ones, no dropout."""
    conv = keras.Model(teacher.input, teacher.get_layer("conv").output)
    h = ops.convert_to_numpy(conv(x, training=False)).astype("float64")
    gamma, beta, moving_mean, moving_var = teacher.get_layer("bn").get_weights()
    if batch_stats:
        mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    else:
        mean, var = moving_mean, moving_var
    h = np.maximum(gamma * (h - mean) / np.sqrt(var + EPS) + beta, 0.0)
    kernel, bias = teacher.get_layer("logits").get_weights()
    return h.mean((1, 2)) @ kernel + bias


class TeacherLogits(kd.losses.DistillationTerm):
    """Per sample `mean(z_t²)` of the first teacher; with `record`, keeps
    the logits of the (eager) steps that have values."""

    def __init__(self, record=False, **kwargs):
        super().__init__(**kwargs)
        self.record = record
        self.seen = []

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        z_t = ops.cast(teacher_outputs[0]["logits"], "float32")
        if self.record and isinstance(z_t.shape[0], int):
            self.seen.append(ops.convert_to_numpy(z_t))
        return ops.mean(ops.square(z_t), -1) + 0.0 * ops.sum(student_outputs["logits"])


def linear_student():
    """Pooling → Dense: the student only has to take part in these steps
    (SGD(0), no student loss); few ops, for the eager steps on JAX."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="student")


def distiller(teacher, flag=True, run_eagerly=False, **kwargs):
    term = TeacherLogits(record=run_eagerly)
    model = kd.Distiller(
        teacher,
        linear_student(),
        term,
        student_loss_weight=0.0,
        teacher_batch_statistics=flag,
        **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=run_eagerly)
    return model, term


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype="float32"), rng.integers(0, 10, n)


@pytest.mark.multi_backend
@pytest.mark.parametrize("flag", [True, False])
def test_teacher_logits_in_the_step_match_numpy(flag):
    teacher = bn_teacher()
    x, y = batch()
    model, term = distiller(teacher, flag, run_eagerly=True)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    expected = np_logits(teacher, x, batch_stats=flag)
    # Dropout (0.5) stays off: the step's logits are deterministic.
    np.testing.assert_allclose(term.seen[-1], expected, rtol=1e-4, atol=1e-4)
    # The two modes differ on this teacher, so the check tells them apart.
    assert np.abs(np_logits(teacher, x, not flag) - expected).max() > 1e-2


@pytest.mark.multi_backend
def test_compiled_step_matches_numpy_and_teacher_is_untouched():
    teacher = bn_teacher()
    before = all_values(teacher)
    x, y = batch(48)
    model, _ = distiller(teacher)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    # Every weight, moving mean and variance included, as saved.
    for b, a in zip(before, all_values(teacher)):
        np.testing.assert_array_equal(b, a)
    assert "call" not in vars(teacher.get_layer("bn"))
    # The epoch's term is the mean over the three batches of each batch's
    # mean(z_t²), the teacher normalised per batch.
    expected = np.mean(
        [
            np.mean(np_logits(teacher, x[i : i + 16], True) ** 2)
            for i in range(0, 48, 16)
        ]
    )
    np.testing.assert_allclose(history.history["teacher_logits"], expected, rtol=1e-4)


@pytest.mark.multi_backend
def test_matches_keras_training_mode_batch_norm_with_a_mask():
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(7, 4, mask_zero=True, name="embed")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    teacher = keras.Model(inputs, x)
    bn = teacher.get_layer("bn")
    bn.set_weights([np.full(4, 1.5), np.full(4, 0.2), np.full(4, 3.0), np.ones(4)])
    tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 6, 0], [1, 1, 2, 3, 4]], "int32")
    got = ops.convert_to_numpy(
        batch_statistics.run(
            teacher, tokens, batch_statistics.batch_norm_layers(teacher)
        )
    )
    # Keras' own layer in training mode, on a trainable copy.
    reference = keras.layers.BatchNormalization()
    embedded = teacher.get_layer("embed")(tokens)
    reference.build(embedded.shape)
    reference.set_weights(bn.get_weights())
    want = reference(embedded, training=True, mask=ops.not_equal(tokens, 0))
    np.testing.assert_allclose(got, ops.convert_to_numpy(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bn.get_weights()[2], np.full(4, 3.0))


@pytest.mark.multi_backend
def test_per_teacher_flags_and_evaluation_in_inference_mode():
    first, second = bn_teacher("first"), bn_teacher("second")
    x, y = batch()
    model, _ = distiller([first, second], [True, False])
    y_pred = model(x, training=True)
    for outputs, teacher, flag in zip(y_pred["teachers"], (first, second), (1, 0)):
        np.testing.assert_allclose(
            ops.convert_to_numpy(outputs["logits"]),
            np_logits(teacher, x, bool(flag)),
            rtol=1e-4,
            atol=1e-4,
        )
    # Evaluation runs the teachers in inference mode: moving statistics.
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["teacher_logits"], np.mean(np_logits(first, x, False) ** 2), rtol=1e-4
    )


@pytest.mark.multi_backend
def test_config_round_trip_and_save_load(tmp_path):
    def make(flag):
        return kd.Distiller(
            [bn_teacher("a"), bn_teacher("b")],
            small_cnn(4, name="student"),
            kd.losses.LogitsDistillation(),
            teacher_batch_statistics=flag,
        )

    model = make([True, False])
    config = model.get_config()
    assert config["teacher_batch_statistics"] == [True, False]
    restored = kd.Distiller.from_config(config)
    assert restored._batch_statistics == [True, False]
    assert make(False).get_config()["teacher_batch_statistics"] is False
    model.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert loaded._batch_statistics == [True, False]
    x, _ = batch()
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x, training=True)["teachers"][0]["logits"]),
        np_logits(model.teacher[0], x, True),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.multi_backend
def test_bad_values_are_refused():
    teacher, student = bn_teacher(), small_cnn(4)
    term = kd.losses.LogitsDistillation()
    with pytest.raises(ValueError, match="one bool per teacher"):
        kd.Distiller(teacher, student, term, teacher_batch_statistics=[True, True])
    with pytest.raises(ValueError, match="one bool per teacher"):
        kd.Distiller(teacher, student, term, teacher_batch_statistics="yes")
    labels = kd.SoftLabelTeacher(np.full((10, 10), 0.1, "float32"))
    with pytest.raises(ValueError, match="runs no BatchNorm"):
        kd.Distiller(labels, student, term, teacher_batch_statistics=True)


def test_ofd_preset_turns_it_on():
    teacher, student = kd.models.digits_cnn_large(), kd.models.digits_cnn_small()
    kwargs = kd.presets.build("ofd", teacher, student)
    assert kwargs["teacher_batch_statistics"] is True
    assert kd.Distiller(teacher, student, **kwargs)._batch_statistics == [True]
    both = kd.presets.build("kd+ofd", teacher, student)
    assert both["teacher_batch_statistics"] is True
    off = kd.presets.build("ofd", teacher, student, teacher_batch_statistics=False)
    assert off["teacher_batch_statistics"] is False
    assert "teacher_batch_statistics" not in kd.presets.build("kd", teacher, student)
    with pytest.raises(ValueError, match="Unknown hyper-parameter"):
        kd.presets.build("kd", teacher, student, teacher_batch_statistics=True)


def test_presets_that_disagree_on_a_distiller_option_need_an_override():
    from types import SimpleNamespace

    from keras_kd.presets import registry

    on, off = (
        SimpleNamespace(distiller_options={"teacher_batch_statistics": flag})
        for flag in (True, False)
    )
    with pytest.raises(ValueError, match="teacher_batch_statistics"):
        registry._distiller_options("a+b", [on, off], {})
    overrides = {"teacher_batch_statistics": False, "weight": 2.0}
    options = registry._distiller_options("a+b", [on, off], overrides)
    assert options == {"teacher_batch_statistics": False}
    assert overrides == {"weight": 2.0}
