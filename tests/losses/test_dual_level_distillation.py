"""DLKD against NumPy computations from the term's own head weights."""

import keras
import numpy as np
import pytest
from helpers import all_values
from helpers import assert_all_moved
from helpers import assert_unchanged
from helpers import fit_steps
from helpers import numpy_log_softmax
from helpers import numpy_softmax
from helpers import small_cnn
from helpers import sparse_ce
from helpers import trainable_values
from keras import layers
from keras import ops

import keras_kd as kd
from keras_kd.losses.dual_level_distillation import rotate_views

pytestmark = pytest.mark.multi_backend


# --- NumPy reference ---------------------------------------------------------


def np_weights(layer):
    return [ops.convert_to_numpy(w).astype("float64") for w in layer.weights]


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_mlp(x, head):
    """Dense → BN (training: batch statistics) → ReLU → Dense."""
    k1, b1 = np_weights(head.layers[0])
    gamma, beta = np_weights(head.layers[1])[:2]
    k2, b2 = np_weights(head.layers[3])
    h = x @ k1 + b1
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + head.layers[1].epsilon) * gamma + beta
    return np.maximum(h, 0) @ k2 + b2


def np_correlation(g_s, f_t, temperature=0.5):
    """Official CorrLoss: rows = rotated views, columns = unrotated views."""
    b = len(g_s) // 4
    sim = lambda v: np_normalize(v[b:]) @ np_normalize(v[:b]).T
    p_t = numpy_softmax(sim(f_t) / temperature)
    log_s = numpy_log_softmax(sim(g_s) / temperature)
    return np.sum(p_t * (np.log(p_t) - log_s), axis=1).mean()


def np_supcon(e, labels, temperature=0.07):
    """Khosla et al.'s SupCon, one anchor at a time."""
    logits = e @ e.T / temperature
    losses = []
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        log_den = np.log(np.sum(np.exp(logits[i, others])))
        positives = [j for j in others if labels[j] == labels[i]]
        losses.append(-np.mean([logits[i, j] - log_den for j in positives]))
    return np.mean(losses)


def np_dlkd(term, f_s, f_t, labels):
    corr = np_correlation(np_mlp(f_s, term.correlation_head), f_t)
    dense = lambda x, layer: x @ np_weights(layer)[0] + np_weights(layer)[1]
    e = np.concatenate(
        [
            np_normalize(dense(f_s, term.student_embedding)),
            np_normalize(dense(f_t, term.teacher_embedding)),
        ]
    )
    sup = np_supcon(e, np.tile(np.tile(labels, 4), 2))
    aligned = np_normalize(np_mlp(f_s, term.alignment_head))
    align = np.mean(2 - 2 * np.sum(aligned * np_normalize(f_t), axis=-1))
    return {"correlation": 50 * corr, "contrastive": sup, "alignment": 20 * align}


def run(term, f_t, f_s, labels, training=True):
    value = term(
        [{"t": ops.convert_to_tensor(f_t)}],
        {"s": ops.convert_to_tensor(f_s)},
        labels=ops.convert_to_tensor(labels),
        teacher_weights=[1.0],
        training=training,
    )
    return {k: float(ops.convert_to_numpy(v)) for k, v in value.items()}


# --- Formulas ----------------------------------------------------------------


def test_rotated_views_follow_numpy_and_keep_the_original_first():
    x = np.random.default_rng(0).normal(size=(3, 5, 5, 2)).astype("float32")
    got = ops.convert_to_numpy(rotate_views(ops.convert_to_tensor(x)))
    expected = np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)])
    np.testing.assert_array_equal(got, expected)


def test_parts_match_numpy_with_default_weights():
    rng = np.random.default_rng(1)
    b, d_s, d_t = 3, 6, 5
    f_s = rng.normal(size=(4 * b, d_s)).astype("float32")
    f_t = rng.normal(size=(4 * b, d_t)).astype("float32")
    labels = np.array([0, 1, 0])
    term = kd.losses.DualLevelDistillation("t", "s", embedding_dim=8)
    term.build([{"t": (None, d_t)}], {"s": (None, d_s)})
    got = run(term, f_t, f_s, labels)
    expected = np_dlkd(term, f_s.astype("float64"), f_t.astype("float64"), labels)
    assert set(got) == set(term.component_names)
    for part in term.component_names:
        np.testing.assert_allclose(got[part], expected[part], rtol=2e-4, atol=1e-5)


def test_feature_maps_are_pooled_and_one_hot_labels_accepted():
    rng = np.random.default_rng(2)
    maps_s = rng.normal(size=(8, 3, 3, 4)).astype("float32")
    f_t = rng.normal(size=(8, 5)).astype("float32")
    labels = np.array([1, 2])
    term = kd.losses.DualLevelDistillation("t", "s", embedding_dim=4)
    term.build([{"t": (None, 5)}], {"s": (None, 3, 3, 4)})
    got = run(term, f_t, maps_s, np.eye(3, dtype="float32")[labels])
    expected = np_dlkd(
        term, maps_s.mean(axis=(1, 2)).astype("float64"), f_t.astype("float64"), labels
    )
    for part in term.component_names:
        np.testing.assert_allclose(got[part], expected[part], rtol=2e-4, atol=1e-5)


def test_correlation_is_zero_when_student_similarities_match_teacher():
    """KL of equal distributions; SupCon is not pushed by it (§3)."""
    rng = np.random.default_rng(3)
    f = rng.normal(size=(8, 4)).astype("float32")
    from keras_kd.losses.dual_level_distillation import correlation_divergence

    value = correlation_divergence(
        ops.convert_to_tensor(2 * f), ops.convert_to_tensor(f), 0.5
    )
    np.testing.assert_allclose(float(ops.convert_to_numpy(value)), 0.0, atol=1e-6)
    assert np_correlation(f[::-1].copy(), f) > 1e-3


# --- Training ----------------------------------------------------------------


def dense_student(name="mlp"):
    """No BatchNorm: each view's logits depend on that view alone."""
    inputs = keras.Input((8, 8, 1))
    h = layers.Dense(16, activation="relu", name="features")(layers.Flatten()(inputs))
    return keras.Model(inputs, layers.Dense(10, name="logits")(h), name=name)


def test_student_loss_is_ce_on_unrotated_views_only(digits):
    x, _, y, _ = digits
    x, y = x[:16], y[:16]
    keras.utils.set_random_seed(0)
    teacher, student = small_cnn(8, name="teacher"), dense_student()
    distiller = kd.Distiller(
        teacher,
        student,
        kd.losses.DualLevelDistillation("features", "features"),
        student_loss_weight=1.0,
        weighting="additive",
    )
    distiller.compile("adam", sparse_ce())
    y_pred = distiller(x, training=True)
    logits = ops.convert_to_numpy(y_pred["student"]["logits"])
    assert logits.shape == (64, 10)
    views = np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)])
    np.testing.assert_allclose(
        logits, ops.convert_to_numpy(student(views)), rtol=1e-4, atol=1e-5
    )
    distiller.compute_loss(x, y, y_pred)
    ce = -numpy_log_softmax(logits[:16].astype("float64"))[np.arange(16), y].mean()
    np.testing.assert_allclose(
        float(distiller.student_loss_tracker.result()), ce, rtol=1e-4
    )


def test_gradients_reach_heads_and_student_not_teacher_backbone(
    digits, trained_teacher
):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher, student = trained_teacher, small_cnn(8, name="student")
    term = kd.losses.DualLevelDistillation("features", "features", embedding_dim=32)
    distiller = kd.Distiller(
        teacher, student, term, student_loss_weight=0.0, weighting="additive"
    )
    distiller.compile(keras.optimizers.Adam(1e-2), sparse_ce(), metrics=["accuracy"])
    teacher_before = all_values(teacher)
    student_before = trainable_values(student)
    heads = [
        term.correlation_head,
        term.alignment_head,
        term.student_embedding,
        term.teacher_embedding,
    ]
    heads_before = [[w.copy() for w in h.get_weights()] for h in heads]
    history = fit_steps(distiller, x_train, y_train)
    for part in term.component_names:
        assert history[f"dual_level_distillation_{part}"][0] > 0, part
    assert_unchanged(teacher_before, all_values(teacher))
    # A zero CE weight: only DLKD's gradient moves the student, whose
    # backbone it reaches through "features", not the logits layer after it.
    student_after = trainable_values(student)
    assert_all_moved(student_before[:-2], student_after[:-2])
    assert_unchanged(student_before[-2:], student_after[-2:])
    # Adam leaves a weight with a zero gradient unchanged, so each head
    # changing shows that gradients reach it (the teacher's one included).
    for head, before in zip(heads, heads_before):
        assert any(
            np.abs(a - b).max() > 1e-4 for a, b in zip(before, head.get_weights())
        ), head.name


# --- Errors and config -------------------------------------------------------


def test_non_square_inputs_rejected_at_construction():
    teacher = small_cnn(8, name="teacher", input_shape=(8, 6, 1))
    student = small_cnn(4, name="student", input_shape=(8, 6, 1))
    with pytest.raises(ValueError, match="square images.*8×6"):
        kd.Distiller(
            teacher, student, kd.losses.DualLevelDistillation("features", "features")
        )


@pytest.mark.parametrize(
    "case", ["list_of_layers", "two_teachers", "no_labels", "bad_temperature"]
)
def test_bad_inputs_raise(case):
    if case == "list_of_layers":
        with pytest.raises(ValueError, match="one layer name"):
            kd.losses.DualLevelDistillation(["a", "b"], "features")
    elif case == "two_teachers":
        teachers = [small_cnn(8, name="t1"), small_cnn(8, name="t2")]
        with pytest.raises(ValueError, match="one teacher"):
            kd.Distiller(
                teachers,
                small_cnn(4, name="s"),
                kd.losses.DualLevelDistillation("features", "features"),
            )
    elif case == "no_labels":
        term = kd.losses.DualLevelDistillation("t", "s")
        term.build([{"t": (None, 4)}], {"s": (None, 4)})
        with pytest.raises(ValueError, match="needs the labels"):
            term(
                [{"t": np.ones((4, 4), "float32")}],
                {"s": np.ones((4, 4), "float32")},
                teacher_weights=[1.0],
            )
    else:
        with pytest.raises(ValueError, match="contrastive_temperature"):
            kd.losses.DualLevelDistillation("t", "s", contrastive_temperature=0)


def test_config_round_trip():
    term = kd.losses.DualLevelDistillation(
        "t",
        "s",
        correlation_weight=20,
        contrastive_weight=0.5,
        alignment_weight=10,
        embedding_dim=64,
    )
    restored = type(term).from_config(term.get_config())
    assert restored.get_config() == term.get_config()


def np_views(image, flip, offsets, padding, pad_value):
    """The official order (ifding/DLKD dataset/cifar.py): flip once, rotate,
    then RandomCrop(padding) of each rotated view, padding black."""
    image = image[:, ::-1] if flip else image
    views = []
    for k, (dy, dx) in zip(range(4), offsets):
        view = np.rot90(image, k, axes=(0, 1))
        padded = np.pad(
            view, ((padding,) * 2, (padding,) * 2, (0, 0)), constant_values=pad_value
        )
        views.append(padded[dy : dy + view.shape[0], dx : dx + view.shape[1]])
    return views


def test_dlkd_views_share_one_flip_and_get_their_own_crops():
    keras.utils.set_random_seed(3)
    batch, size, padding, black = 6, 6, 2, -1.875  # black: the normalised 0.
    term = kd.losses.DualLevelDistillation(
        "features", "features", crop_padding=padding, pad_value=[black], seed=5
    )
    images = (1 + np.arange(batch * size * size)).reshape(batch, size, size, 1)
    images = images.astype("float32")
    views = ops.convert_to_numpy(term.transform_inputs(ops.convert_to_tensor(images)))
    assert views.shape == (4 * batch, size, size, 1)
    candidates = [
        (f, dy, dx)
        for f in (0, 1)
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
    ]
    flips, all_offsets = [], []
    for b in range(batch):
        found = []
        for k in range(4):
            view = views[k * batch + b]
            matches = [
                (f, dy, dx)
                for f, dy, dx in candidates
                if np.array_equal(
                    view, np_views(images[b], f, [(dy, dx)] * 4, padding, black)[k]
                )
            ]
            assert len(matches) == 1, (b, k, matches)
            found.append(matches[0])
        assert len({f for f, _, _ in found}) == 1  # One flip for all views.
        flips.append(found[0][0])
        all_offsets.append([(dy, dx) for _, dy, dx in found])
    assert set(flips) == {0, 1}
    # Each view has its own crop: offsets differ within images.
    assert sum(len(set(o)) > 1 for o in all_offsets) >= batch - 1
    # The padding is the normalised black wherever a crop reaches it.
    assert np.isin(views, [black]).any()
    assert set(np.unique(views)) <= set(np.unique(images)) | {black}
    # No augmentation outside training; config round trip.
    plain = ops.convert_to_numpy(term.transform_inputs(images, training=False))
    np.testing.assert_array_equal(plain, ops.convert_to_numpy(rotate_views(images)))
    restored = kd.losses.DualLevelDistillation.from_config(term.get_config())
    assert restored.crop_padding == padding and restored.pad_value == [black]
    with pytest.raises(ValueError, match="crop_padding"):
        kd.losses.DualLevelDistillation("a", "b", crop_padding=-1)


def test_fit_with_the_official_view_augmentation(digits, trained_teacher):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    student = small_cnn(4, name="student")
    before = [w.copy() for w in student.get_weights()]
    term = kd.losses.DualLevelDistillation(
        "features", "features", embedding_dim=8, crop_padding=2, pad_value=-0.5
    )
    distiller = kd.Distiller(
        trained_teacher, student, term, student_loss_weight=1.0, weighting="additive"
    )
    distiller.compile(keras.optimizers.Adam(1e-3), sparse_ce())
    history = distiller.fit(
        x_train[:128], y_train[:128], epochs=1, batch_size=32, verbose=0
    )
    assert np.isfinite(history.history["dual_level_distillation"]).all()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, student.get_weights()))
