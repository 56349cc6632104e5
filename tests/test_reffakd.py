"""ReffAKD: autoencoder, class similarity, soft labels and the §5 loss."""

import itertools
import warnings

import keras
import numpy as np
import pytest
from helpers import half_pixel_bilinear
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import sparse_ce
from helpers import tiny_resnet
from keras import ops

import keras_kd as kd
from keras_kd import reffakd


@pytest.mark.parametrize(
    "input_shape, code_shape, params",
    [((32, 32, 3), (4, 4, 48), 47355), ((8, 8, 1), (1, 1, 48), 46585)],
)
def test_autoencoder_architecture(input_shape, code_shape, params):
    autoencoder = reffakd.Autoencoder(input_shape)
    assert autoencoder.encoder.output_shape[1:] == code_shape
    assert autoencoder.count_params() == params
    shape = autoencoder.compute_output_spec(keras.KerasTensor((2,) + input_shape)).shape
    assert shape == (2,) + input_shape
    restored = reffakd.Autoencoder.from_config(autoencoder.get_config())
    assert restored.count_params() == params


def test_autoencoder_rejects_sizes_not_multiple_of_8():
    with pytest.raises(ValueError, match="multiples of 8"):
        reffakd.Autoencoder((28, 28, 1))


def identity_encoder(dim):
    """Codes as (1, 1, dim) maps, to check that they are flattened."""
    return keras.Sequential([keras.Input((dim,)), keras.layers.Reshape((1, 1, dim))])


def test_class_similarity_hand_computed():
    """Class 0: e1, e2 (orthogonal); class 1: e1+e2, e1−e2 (orthogonal).

    Within-class cosines are 0; the four cross pairs are 1/√2, 1/√2, 1/√2,
    −1/√2, so the off-diagonal mean is 1/(2√2).
    """
    x = np.array([[1, 0], [1, 1], [0, 1], [1, -1]], "float32")
    y = np.array([0, 1, 0, 1])
    got = reffakd.class_similarity(identity_encoder(2), x, y, per_class=2)
    off = 1 / (2 * np.sqrt(2))
    np.testing.assert_allclose(got, [[0.0225, off], [off, 0.0225]], atol=1e-6)


def test_class_similarity_matches_pairwise_loop():
    """All images sampled: the mean over every unordered pair of each cell."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(15, 6)).astype("float32")
    y = np.repeat([2, 0, 1], 5)
    got = reffakd.class_similarity(
        identity_encoder(6), x, y, per_class=5, diagonal_boost=0.1
    )
    sums, counts = np.zeros((3, 3)), np.zeros((3, 3))
    for i, j in itertools.combinations(range(15), 2):
        cos = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
        for a, b in {(y[i], y[j]), (y[j], y[i])}:
            sums[a, b] += cos
            counts[a, b] += 1
    np.testing.assert_allclose(got, sums / counts + 0.1 * np.eye(3), rtol=1e-5)
    assert counts[0, 0] == 10 and counts[0, 1] == 25


def test_class_similarity_sampling_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype("float32")
    y = np.repeat([0, 1, 2], 20)
    encoder = identity_encoder(4)
    first = reffakd.class_similarity(encoder, x, y, per_class=5, seed=3)
    again = reffakd.class_similarity(encoder, x, y, per_class=5, seed=3)
    other = reffakd.class_similarity(encoder, x, y, per_class=5, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_allclose(first, first.T)
    with pytest.raises(ValueError, match="per_class=25"):
        reffakd.class_similarity(encoder, x, y, per_class=25)


def test_soft_label_table_is_row_softmax():
    similarity = np.random.default_rng(2).uniform(-1, 1, size=(5, 5))
    table = reffakd.soft_label_table(similarity)
    np.testing.assert_allclose(table, numpy_softmax(similarity), rtol=1e-6)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-6)


def test_label_margins_and_the_warning_for_rows_that_rank_another_class_first():
    # Fashion-MNIST seed 0's case: similarities within a few thousandths,
    # class 2's own 0.700 below its 0.705 for class 0.
    similarity = np.array(
        [[0.710, 0.700, 0.690], [0.690, 0.720, 0.700], [0.705, 0.690, 0.700]]
    )
    margins, rivals = reffakd.label_margins(similarity)
    np.testing.assert_allclose(margins, [0.010, 0.020, -0.005], atol=1e-12)
    np.testing.assert_array_equal(rivals, [1, 2, 0])
    with pytest.warns(UserWarning, match=r"1 of 3 classes .*\(2 -> 0\).* 0\.0050"):
        table = reffakd.soft_label_table(similarity)
    assert table[2].argmax() == 0
    # The fix the warning names: a bonus above the shortfall ranks every
    # label first, and the table is then silent.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = reffakd.soft_label_table(similarity + 0.006 * np.eye(3))
    np.testing.assert_array_equal(table.argmax(axis=1), [0, 1, 2])


@pytest.mark.parametrize("alpha, temperature", [(0.9, 4.0), (0.3, 20.0)])
def test_distiller_total_is_reffakd_loss(alpha, temperature):
    """(1−α)·CE + α·T²·KL(P[y] ‖ softmax(z_s/T)), KL averaged over the batch."""
    rng = np.random.default_rng(3)
    table = reffakd.soft_label_table(rng.uniform(-1, 1, size=(4, 4)))
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.integers(0, 4, size=8)
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    distiller = kd.Distiller(
        kd.SoftLabelTeacher(table),
        student,
        kd.losses.LogitsDistillation(temperature=temperature),
        student_loss_weight=1.0 - alpha,
    )
    distiller.compile("sgd", sparse_ce())
    y_pred = distiller(x, training=True)
    total = float(distiller.compute_loss(x, y, y_pred))

    z = ops.convert_to_numpy(y_pred["student"]["logits"]).astype("float64")
    ce = -numpy_log_softmax(z)[np.arange(8), y].mean()
    p = table[y].astype("float64")
    kl = (p * (np.log(p) - numpy_log_softmax(z / temperature))).sum(-1).mean()
    expected = (1 - alpha) * ce + alpha * temperature**2 * kl
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_table_size_must_match_student_classes():
    table = reffakd.soft_label_table(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="5 classes and the student 10"):
        kd.Distiller(
            kd.SoftLabelTeacher(table),
            tiny_resnet(4, 1, "student"),
            kd.losses.LogitsDistillation(),
        )


def test_reffakd_end_to_end_on_digits(digits):
    x_train, x_test, y_train, _ = digits
    # 256 training images (every class; two whole batches), 128 held out.
    x_train, y_train, x_test = x_train[:256], y_train[:256], x_test[:128]
    keras.utils.set_random_seed(0)
    autoencoder, cost = reffakd.train_autoencoder(
        x_train, x_test, epochs=2, learning_rate=0.05
    )
    assert cost["params"] == 46585 and cost["train_seconds"] > 0
    # Inputs are normalised with the training set's per-channel statistics.
    mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(autoencoder.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(autoencoder.std, std, rtol=1e-5)
    # The weights kept are those of the best held-out epoch; the target is
    # the normalised image.
    reconstruction = ops.convert_to_numpy(autoencoder(x_test))
    np.testing.assert_allclose(
        np.mean((reconstruction - (x_test - mean) / std) ** 2),
        cost["val_mse"],
        rtol=1e-4,
    )
    # weight_decay=5e-4 is coupled L2 on every kernel and bias.
    weights = autoencoder.trainable_weights
    expected = 2.5e-4 * sum(np.sum(ops.convert_to_numpy(w) ** 2) for w in weights)
    actual = sum(float(ops.convert_to_numpy(loss)) for loss in autoencoder.losses)
    np.testing.assert_allclose(actual, expected, rtol=1e-4)
    similarity = reffakd.class_similarity(
        autoencoder.encoder, x_train, y_train, per_class=16
    )
    assert similarity.shape == (10, 10)
    table = reffakd.soft_label_table(similarity)
    distiller = kd.Distiller(
        kd.SoftLabelTeacher(table),
        tiny_resnet(4, 1, "student"),
        kd.losses.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.1,
    )
    distiller.compile(keras.optimizers.Adam(3e-3), sparse_ce())
    history = distiller.fit(x_train, y_train, epochs=1, batch_size=128, verbose=0)
    assert np.isfinite(history.history["logits_distillation"]).all()


def test_autoencoder_normalises_inputs_in_its_encoder():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(3, 8, 8, 2)).astype("float32")
    mean, std = [0.4, 0.6], [0.2, 0.3]
    plain = reffakd.Autoencoder((8, 8, 2))
    normed = reffakd.Autoencoder((8, 8, 2), mean=mean, std=std)
    assert normed.count_params() == plain.count_params()
    normed.set_weights(plain.get_weights())
    got = ops.convert_to_numpy(normed.encoder(x))
    expected = ops.convert_to_numpy(plain.encoder((x - np.array(mean)) / np.array(std)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    restored = reffakd.Autoencoder.from_config(normed.get_config())
    assert restored.mean == mean and restored.std == std
    with pytest.raises(ValueError, match="both or neither"):
        reffakd.Autoencoder((8, 8, 2), mean=mean)


@pytest.mark.parametrize("epochs", [200, 20, 7])
def test_multistep_schedule_matches_torch_multisteplr(epochs):
    """MultiStepLR([60, 120, 160], 0.2) per epoch, milestones scaled."""
    steps = 3
    schedule = reffakd.multistep_schedule(0.1, (60, 120, 160), 0.2, epochs, steps)
    milestones = [round(m * epochs / 200) for m in (60, 120, 160)]
    for step in range(epochs * steps):
        epoch = step // steps
        expected = 0.1 * 0.2 ** sum(epoch >= m for m in milestones)
        got = float(ops.convert_to_numpy(schedule(step)))
        assert abs(got - expected) < 1e-9 * 0.1 + 1e-7 * expected, (step, got, expected)


def test_reconstruction_trainer_augments_then_normalises():
    """Crop (black padding), flip and rotation in training; the target is
    the normalised augmented image; no augmentation at inference."""
    keras.utils.set_random_seed(1)
    autoencoder = reffakd.Autoencoder((8, 8, 1), mean=[0.5], std=[0.25])
    trainer = reffakd.reconstruction_trainer(autoencoder)
    x = np.ones((16, 8, 8, 1), "float32")  # White images.
    out = ops.convert_to_numpy(trainer(x, training=True))
    target = out[..., 1:]
    black, white = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert np.isclose(target, black).any() and np.isclose(target, white).any()
    assert np.all(np.isclose(target, black) | np.isclose(target, white))
    inference = ops.convert_to_numpy(trainer(x, training=False))
    np.testing.assert_allclose(inference[..., 1:], white, rtol=1e-6)
    np.testing.assert_allclose(
        inference[..., :1], ops.convert_to_numpy(autoencoder(x)), rtol=1e-5
    )
    loss = ops.convert_to_numpy(reffakd.reconstruction_mse(None, inference))
    np.testing.assert_allclose(
        loss, ((inference[..., :1] - white) ** 2).mean((1, 2, 3)), rtol=1e-5
    )


def test_best_checkpoint_restores_the_lowest_held_out_epoch():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = reffakd.best_checkpoint(epochs=3)
    callback.set_model(model)
    callback.on_train_begin()
    kept = None
    for epoch, val in enumerate([3.0, 1.0, 2.0]):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.zeros(1, "float32")])
        if val == 1.0:
            kept = [w.copy() for w in model.get_weights()]
        callback.on_epoch_end(epoch, {"val_reconstruction_mse": val})
    callback.on_train_end()
    assert callback.best == 1.0
    for a, b in zip(model.get_weights(), kept):
        np.testing.assert_array_equal(a, b)


def test_autoencoder_size_resizes_28_to_32_and_keeps_multiples_of_8():
    """The Fashion-MNIST notebook's `T.Resize((32, 32))` (bilinear)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    got = reffakd.autoencoder_size(x)
    assert got.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(got, half_pixel_bilinear(x, (32, 32)), atol=1e-5)
    same = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(reffakd.autoencoder_size(same), same)


def test_augmentation_crops_only_with_crop_padding():
    """Left half white, right half black: on the centre row, a flip and a
    rotation of at most 15° keep the edge within a pixel of the centre, so
    columns 12 and 19 always differ; a 4-pixel crop moves the edge and
    sometimes gives them the same colour."""
    x = np.zeros((64, 32, 32, 1), "float32")
    x[:, :, :16] = 1.0

    def edge_moves(crop_padding):
        out = reffakd.augmentation(crop_padding, seed=3)(x, training=True)
        row = ops.convert_to_numpy(out)[:, 16, :, 0]
        return np.any(row[:, 12] == row[:, 19])

    assert not edge_moves(0)
    assert edge_moves(4)
    unchanged = reffakd.augmentation(0, seed=3)(x, training=False)
    np.testing.assert_array_equal(ops.convert_to_numpy(unchanged), x)


def test_class_similarity_encodes_augmented_images():
    """The official notebooks encode the augmented training loader."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2)).astype("float32")
    y = np.repeat(np.arange(2), 10)

    def shift(images, training=False):
        assert training
        return images + 1.0

    got = reffakd.class_similarity(
        identity_encoder(2), x, y, per_class=4, seed=1, augment=shift
    )
    want = reffakd.class_similarity(
        identity_encoder(2), x + 1.0, y, per_class=4, seed=1
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)
