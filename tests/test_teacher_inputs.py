"""`teacher_preprocessing`: teachers fed their own inputs (another size,
their own pixel scaling) inside the Distiller's step, on every backend.

The detection of a teacher's own input scaling (`leading_scaling`,
`expects_pixels` and the warning `fit` gives) reads layers and their
config, not the step: those tests are not marked multi_backend (building
MobileNetV3Small alone takes about 17 s on JAX)."""

import warnings

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce
from keras import layers
from keras import ops

import keras_kd as kd

multi_backend = pytest.mark.multi_backend


def net(size, name, scaling=None, seed=0, softmax=False):
    """Conv → pool → Dense on (size, size, 1), without batch norm (its
    training-mode outputs do not depend on the step); `scaling` first."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    h = inputs if scaling is None else scaling(inputs)
    h = layers.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    activation = "softmax" if softmax else None
    outputs = layers.Dense(10, activation=activation, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype="float32"), rng.integers(0, 10, n)


def numpy_kd(z_t, z_s, t):
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), batch mean."""
    p_t = numpy_softmax(z_t / t)
    kl = np.sum(p_t * (np.log(p_t) - numpy_log_softmax(z_s / t)), axis=-1)
    return float(np.mean(t * t * kl))


def weights_of(model):
    return [ops.convert_to_numpy(v).copy() for v in model.weights]


@multi_backend
def test_resized_teacher_term_matches_numpy_in_the_compiled_step():
    teacher, student = net(16, "teacher", seed=1), net(8, "student", seed=2)
    distiller = kd.Distiller(
        teacher,
        student,
        kd.losses.LogitsDistillation(temperature=2.0),
        student_loss_weight=0.0,
        teacher_preprocessing=layers.Resizing(16, 16),
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce())
    x, y = batch()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    z_t = ops.convert_to_numpy(teacher(ops.image.resize(x, (16, 16))))
    z_s = ops.convert_to_numpy(student(x))
    expected = numpy_kd(z_t, z_s, 2.0)
    np.testing.assert_allclose(logs["logits_distillation"], expected, rtol=1e-4)


@multi_backend
def test_teacher_and_its_preprocessing_stay_frozen_while_the_student_trains():
    teacher, student = net(16, "teacher", seed=1), net(8, "student", seed=2)
    mean, std = np.array([0.5], "float32"), np.array([0.25], "float32")
    preprocessing = keras.Sequential(
        [kd.teacher_inputs.unnormalize(mean, std), layers.Resizing(16, 16)]
    )
    distiller = kd.Distiller(
        teacher,
        student,
        kd.losses.LogitsDistillation(),
        teacher_preprocessing=[preprocessing],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce())
    teacher_before, student_before = weights_of(teacher), weights_of(student)
    x, y = batch(32)
    distiller.fit((x - mean) / std, y, batch_size=16, epochs=1, verbose=0)
    for before, after in zip(teacher_before, weights_of(teacher)):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.allclose(b, a) for b, a in zip(student_before, weights_of(student))
    )
    assert not preprocessing.trainable
    trainable = {id(v) for v in distiller.trainable_variables}
    assert not any(id(v) in trainable for v in teacher.weights)


@multi_backend
def test_unnormalize_inverts_the_students_normalisation():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 5, 5, 3)).astype("float32")
    mean, std = kd.data.channel_stats(pixels.astype("uint8"))
    layer = kd.teacher_inputs.unnormalize(mean, std)
    restored = ops.convert_to_numpy(layer((pixels - mean) / std))
    np.testing.assert_allclose(restored, pixels, atol=1e-3)


@multi_backend
def test_config_round_trip_keeps_each_teachers_preprocessing(tmp_path):
    teachers = [net(16, "t16", seed=1), net(8, "t8", seed=3)]
    preprocessing = [
        keras.Sequential(
            [kd.teacher_inputs.unnormalize([0.5], [0.25]), layers.Resizing(16, 16)]
        ),
        None,
    ]
    distiller = kd.Distiller(
        teachers,
        net(8, "student", seed=2),
        kd.losses.LogitsDistillation(),
        teacher_preprocessing=preprocessing,
    )
    config = distiller.get_config()
    restored = kd.Distiller.from_config(config)
    transform = restored.teacher_preprocessing[0]
    assert restored.teacher_preprocessing[1] is None
    x, _ = batch(2)
    np.testing.assert_allclose(
        ops.convert_to_numpy(transform(x)),
        ops.convert_to_numpy(preprocessing[0](x)),
        rtol=1e-6,
    )
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.teacher_preprocessing[0], keras.Sequential)
    # The loaded Distiller feeds its teacher the same transformed batch.
    for i in range(2):
        np.testing.assert_allclose(
            ops.convert_to_numpy(loaded(x, training=True)["teachers"][i]["logits"]),
            ops.convert_to_numpy(distiller(x, training=True)["teachers"][i]["logits"]),
            rtol=1e-5,
        )


@multi_backend
def test_shape_mismatch_names_teacher_preprocessing():
    teacher, student = net(16, "teacher"), net(8, "student")
    term = kd.losses.LogitsDistillation()
    with pytest.raises(ValueError, match=r"teacher_preprocessing\[0\] maps"):
        kd.Distiller(
            teacher, student, term, teacher_preprocessing=layers.Resizing(12, 12)
        )
    with pytest.raises(ValueError, match=r"Resizing\(16, 16\)"):
        kd.Distiller(teacher, student, term)
    with pytest.raises(ValueError, match="2 entries for 1 teachers"):
        kd.Distiller(teacher, student, term, teacher_preprocessing=[None, None])


@multi_backend
def test_teachers_fed_no_images_refuse_preprocessing(tmp_path):
    student = net(8, "student")
    soft = kd.SoftLabelTeacher(np.eye(10))
    with pytest.raises(ValueError, match="SoftLabelTeacher, which reads no images"):
        kd.Distiller(
            soft,
            student,
            kd.losses.LogitsDistillation(),
            teacher_preprocessing=layers.Resizing(8, 8),
        )
    x, y = batch(16)
    kd.offline.record(
        net(8, "teacher"),
        (x, y),
        kd.offline.CropFlip(padding=0, flip=False),
        1,
        str(tmp_path),
        seed=0,
        verbose=0,
    )
    with pytest.raises(ValueError, match="RecordedTeacher, which reads no images"):
        kd.Distiller(
            kd.offline.RecordedTeacher(str(tmp_path)),
            student,
            kd.losses.LogitsDistillation(),
            teacher_preprocessing=[layers.Resizing(8, 8)],
        )


def test_a_pixel_teacher_fed_normalised_images_warns():
    teacher = net(8, "pixels", scaling=layers.Rescaling(1 / 255), softmax=True)
    assert kd.teacher_inputs.leading_scaling(teacher).name.startswith("rescaling")
    x, y = batch(16)

    def distiller(**kwargs):
        model = kd.Distiller(
            teacher, net(8, "student"), kd.losses.LogitsDistillation(), **kwargs
        )
        model.compile(optimizer="adam", loss=sparse_ce())
        return model

    def fit(model, images):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(images, y, batch_size=16, epochs=1, verbose=0)
        return [str(w.message) for w in caught if "looks normalised" in str(w.message)]

    # Each `fit` checks its own batch: one Distiller (one compiled step)
    # serves the three fits without teacher_preprocessing.
    plain = distiller()
    normalised = (x - 0.5) / 0.25
    (message,) = fit(plain, normalised)
    assert "teacher_preprocessing=kd.teacher_inputs.unnormalize" in message
    assert fit(plain, x) != []  # 0..1 images: not the 0..255 pixels it scales.
    assert fit(plain, x * 255.0) == []
    unnormalize = kd.teacher_inputs.unnormalize([0.5 * 255], [0.25 * 255])
    assert fit(distiller(teacher_preprocessing=unnormalize), normalised) == []


def test_leading_scaling_sees_through_inputs_resizing_and_nesting():
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Resizing(4, 4),
            layers.Normalization(mean=[123.7, 116.3, 103.5], variance=[1.0] * 3),
            layers.Flatten(),
            layers.Dense(2),
        ]
    )
    outer = keras.Sequential([keras.Input((8, 8, 3)), inner])
    found = kd.teacher_inputs.leading_scaling(outer)
    assert isinstance(found, layers.Normalization)
    assert kd.teacher_inputs.expects_pixels(found)
    unit = layers.Normalization(mean=[0.45], variance=[0.05])
    assert not kd.teacher_inputs.expects_pixels(unit)
    assert kd.teacher_inputs.leading_scaling(net(8, "plain")) is None
    application = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10
    )
    found = kd.teacher_inputs.leading_scaling(application)
    assert isinstance(found, layers.Rescaling)  # scale 1/127.5, offset -1
    assert kd.teacher_inputs.expects_pixels(found)
