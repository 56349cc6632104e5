"""CRD against a NumPy computation of RepDistiller's crd/criterion.py and
crd/memory.py (Embed, ContrastMemory, ContrastLoss)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_cnn
from helpers import sparse_ce

import keras_kd as kd
from keras_kd.presets import crd as crd_presets

N, K, DIM = 12, 5, 4
EPS = 1e-7


def np_normalize(x):
    return x / np.sqrt((x * x).sum(-1, keepdims=True))


def np_contrast_loss(p, n_data):
    # ContrastLoss: column 0 the positive, m = K noise samples, Pn = 1/N.
    m, pn = p.shape[1] - 1, 1.0 / n_data
    log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + EPS))
    log_d0 = np.log((m * pn) / (p[:, 1:] + m * pn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def np_crd_step(f_s, f_t, params, index, contrast, z, temperature, momentum):
    """One official CRD forward + memory update; returns loss, banks, Z."""
    w_s, b_s, w_t, b_t, mem_s, mem_t = params
    v1 = np_normalize(f_s @ w_s + b_s)  # student embedding
    v2 = np_normalize(f_t @ w_t + b_t)  # teacher embedding
    out_v2 = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast], v2) / temperature)
    out_v1 = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast], v1) / temperature)
    if z is None:  # Set on the first batch: mean(out) * n_data.
        z = (out_v1.mean() * len(mem_s), out_v2.mean() * len(mem_s))
    loss = np_contrast_loss(out_v1 / z[0], len(mem_s)) + np_contrast_loss(
        out_v2 / z[1], len(mem_s)
    )
    mem_s, mem_t = mem_s.copy(), mem_t.copy()
    mem_s[index] = np_normalize(mem_s[index] * momentum + v1 * (1 - momentum))
    mem_t[index] = np_normalize(mem_t[index] * momentum + v2 * (1 - momentum))
    return loss, mem_s, mem_t, z


def built_term(**kwargs):
    term = kd.losses.ContrastiveRepresentation(
        num_data=N, feat_dim=DIM, num_negatives=K, seed=0, **kwargs
    )
    term.build([{"features": (None, 6)}], {"features": (None, 5)})
    return term


@pytest.mark.multi_backend
def test_nce_and_memory_update_match_numpy():
    rng = np.random.default_rng(0)
    term = built_term(negatives="given")
    params = [
        rng.normal(size=(5, DIM)),
        rng.normal(size=DIM),
        rng.normal(size=(6, DIM)),
        rng.normal(size=DIM),
        np_normalize(rng.normal(size=(N, DIM))),
        np_normalize(rng.normal(size=(N, DIM))),
    ]
    params = [p.astype("float32") for p in params]
    for var, value in zip(
        [
            term.embed_student.kernel,
            term.embed_student.bias,
            term.embed_teacher.kernel,
            term.embed_teacher.bias,
            term.memory_student,
            term.memory_teacher,
        ],
        params,
    ):
        var.assign(value)
    z, diffs = None, []
    for _ in range(2):  # Step 2 reuses the Z of step 1.
        index = rng.permutation(N)[:3].astype("int32")
        negatives = np.stack(
            [rng.choice(np.delete(np.arange(N), i), K, replace=False) for i in index]
        )
        contrast = np.concatenate([index[:, None], negatives], 1).astype("int32")
        f_s = rng.normal(size=(3, 5)).astype("float32")
        f_t = rng.normal(size=(3, 6)).astype("float32")
        loss, mem_s, mem_t, z = np_crd_step(
            f_s, f_t, params, index, contrast, z, 0.07, 0.5
        )
        params[4:] = [mem_s, mem_t]
        ours = term(
            [{"features": f_t}],
            {"features": f_s},
            training=True,
            side_inputs={"example_index": index, "contrast_index": contrast},
        )
        ours = keras.ops.convert_to_numpy(ours)
        assert ours.shape == (3,)
        np.testing.assert_allclose(ours.mean(), loss, rtol=1e-5)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(term.normalizers), z, rtol=1e-5
        )
        for var, ref in zip([term.memory_student, term.memory_teacher], [mem_s, mem_t]):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(var), ref, atol=1e-6)
        diffs.append(abs(ours.mean() - loss))
    print("CRD NCE max abs diff:", max(diffs))


@pytest.mark.multi_backend
def test_sampled_negatives_skip_the_positive_and_cover_the_bank():
    term = built_term(negatives="uniform")
    index = keras.ops.convert_to_tensor(np.arange(N, dtype="int32"))
    draws = np.concatenate(
        [keras.ops.convert_to_numpy(term._contrast_index(index, {})) for _ in range(20)]
    )
    assert draws.shape == (20 * N, K + 1)
    np.testing.assert_array_equal(draws[:, 0], np.tile(np.arange(N), 20))
    assert (draws[:, 1:] != draws[:, :1]).all()
    assert draws.min() == 0 and draws.max() == N - 1
    assert len(np.unique(draws[:, 1:])) == N


def test_memory_bank_bytes_at_cifar_size():
    term = kd.losses.ContrastiveRepresentation(num_data=50000)
    term.build([{"features": (None, 256)}], {"features": (None, 256)})
    banks = [term.memory_student, term.memory_teacher]
    size = sum(keras.ops.convert_to_numpy(v).nbytes for v in banks)
    print("CRD memory banks at 50k images:", size, "bytes")
    assert size == 2 * 50000 * 128 * 4 == 51_200_000
    assert not any(v.trainable for v in banks)


@pytest.mark.slow  # Digits fit: 20-60 s on 2 shared cores.
@pytest.mark.multi_backend
def test_fit_trains_heads_updates_banks_and_freezes_teacher(digits):
    x, _, y, _ = digits
    x, y = x[:320], y[:320]
    keras.utils.set_random_seed(0)
    teacher = small_cnn(16, name="teacher")
    student = small_cnn(8, name="student")
    crd = kd.losses.ContrastiveRepresentation(
        num_data=len(x), feat_dim=16, num_negatives=64, seed=0
    )
    distiller = kd.Distiller(
        teacher, student, [crd], [0.8], student_loss_weight=1.0, weighting="additive"
    )
    distiller.compile(keras.optimizers.Adam(3e-3), loss=sparse_ce())
    # The term's parts are not the student's.
    assert not {id(v) for v in crd.weights} & {id(v) for v in student.weights}
    before = {
        "embed": keras.ops.convert_to_numpy(crd.embed_student.kernel),
        "embed_t": keras.ops.convert_to_numpy(crd.embed_teacher.kernel),
        "memory": keras.ops.convert_to_numpy(crd.memory_teacher),
        "teacher": [keras.ops.convert_to_numpy(v) for v in teacher.weights],
    }
    # One epoch visits every example once, so every memory row is written.
    history = distiller.fit(
        kd.data.with_example_index(x),
        y,
        epochs=1,
        batch_size=32,
        shuffle=True,
        verbose=0,
    )
    losses = history.history["contrastive_representation"]
    assert np.isfinite(losses).all() and losses[0] > 0
    assert not np.allclose(before["embed"], crd.embed_student.kernel)
    assert not np.allclose(before["embed_t"], crd.embed_teacher.kernel)
    memory = keras.ops.convert_to_numpy(crd.memory_teacher)
    # Every row was visited, so every row is a unit vector now.
    assert (np.abs(memory - before["memory"]).max(axis=1) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, atol=1e-5)
    assert (keras.ops.convert_to_numpy(crd.normalizers) > 0).all()
    for old, new in zip(before["teacher"], teacher.weights):
        np.testing.assert_array_equal(old, new)
    # Evaluation runs the student on images alone, or on the dict.
    plain = distiller.evaluate(x, y, verbose=0)
    assert plain == pytest.approx(
        distiller.evaluate(kd.data.with_example_index(x), y, verbose=0)
    )


def test_missing_example_index_fails_before_training(digits):
    x, _, y, _ = digits
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    crd = kd.losses.ContrastiveRepresentation(num_data=len(x), num_negatives=8)
    distiller = kd.Distiller(
        teacher, student, [crd], student_loss_weight=1.0, weighting="additive"
    )
    distiller.compile("sgd", loss=sparse_ce())
    weights = [keras.ops.convert_to_numpy(v) for v in student.weights]
    with pytest.raises(ValueError, match="with_example_index"):
        distiller.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="example_index"):
        distiller.fit(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0
        )
    with pytest.raises(ValueError, match="example_index"):
        distiller.fit({"inputs": x}, y, epochs=1, verbose=0)
    for old, new in zip(weights, student.weights):
        np.testing.assert_array_equal(old, new)


def test_make_dataset_carries_example_indices():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(20, 4, 4, 1), dtype="uint8")
    y = np.arange(20) % 3
    ds = kd.data.make_dataset(x, y, 8, training=True, example_index=True)
    seen = []
    for inputs, labels in ds:
        index = inputs["example_index"].numpy()
        np.testing.assert_allclose(inputs["inputs"].numpy(), x[index] / 255.0)
        np.testing.assert_array_equal(labels.numpy(), y[index])
        seen.extend(index)
    assert len(set(seen)) == len(seen) == 16  # Shuffled, last batch dropped.


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_data"):
        kd.losses.ContrastiveRepresentation(num_data=None)
    with pytest.raises(ValueError, match="negatives"):
        kd.losses.ContrastiveRepresentation(num_data=10, negatives="relax")
    with pytest.raises(ValueError, match="labels"):
        kd.losses.ContrastiveRepresentation(num_data=10, labels=[0] * 9)
    with pytest.raises(ValueError, match="labels"):
        kd.losses.ContrastiveRepresentation(
            num_data=10, labels=[0] * 10, negatives="uniform"
        )
    assert kd.losses.ContrastiveRepresentation(10, negatives="sample").negatives == (
        "uniform"
    )
    term = kd.losses.ContrastiveRepresentation(num_data=10)
    with pytest.raises(ValueError, match="one teacher"):
        term.build([{"features": (None, 4)}] * 2, {"features": (None, 4)})


def test_config_round_trip():
    term = kd.losses.ContrastiveRepresentation(
        num_data=100, feat_dim=32, num_negatives=10, negatives="given", seed=3
    )
    clone = kd.losses.ContrastiveRepresentation.from_config(term.get_config())
    assert clone.get_config() == term.get_config()
    assert clone.side_inputs == ("example_index", "contrast_index")
    exact = kd.losses.ContrastiveRepresentation(num_data=100, replacement=True)
    config = exact.get_config()
    assert (config["negatives"], config["replacement"]) == ("exact", True)
    assert kd.losses.ContrastiveRepresentation.from_config(config).replacement


# RepDistiller's default `mode='exact'` (dataset/cifar100.py l.159-168):
# K negatives from the other classes, without replacement unless the class
# leaves fewer than K.
LABELS = np.repeat(np.arange(4), [15, 10, 20, 15]).astype("int32")  # N = 60


def exact_term(num_negatives, labels=LABELS, seed=0, **kwargs):
    term = kd.losses.ContrastiveRepresentation(
        num_data=len(LABELS),
        feat_dim=DIM,
        num_negatives=num_negatives,
        labels=labels,
        seed=seed,
        **kwargs,
    )
    term.build([{"features": (None, 6)}], {"features": (None, 5)})
    return term


def draw(term, index, training=None):
    index = np.asarray(index, "int32")
    rows = term._contrast_index(
        keras.ops.convert_to_tensor(index), {}, LABELS[index], training
    )
    return keras.ops.convert_to_numpy(rows)


@pytest.mark.multi_backend
@pytest.mark.parametrize("k,distinct", [(30, True), (45, False)])
def test_exact_negatives_come_from_other_classes(k, distinct):
    # k = 30 ≤ 40, the fewest other-class images (class 2): without
    # replacement for every anchor; k = 45 > 40: class 2's anchors draw with
    # replacement, the others (45 or 50 candidates) still without.
    index = np.arange(len(LABELS))
    rows = draw(exact_term(k), index)
    assert rows.shape == (len(index), k + 1)
    np.testing.assert_array_equal(rows[:, 0], index)
    assert (LABELS[rows[:, 1:]] != LABELS[index][:, None]).all()
    unique = np.array([len(set(row)) for row in rows[:, 1:]])
    others = (LABELS[None, :] != LABELS[index][:, None]).sum(1)
    assert (unique[others >= k] == k).all()
    if not distinct:
        assert (unique[others < k] < k).all()  # 45 draws from 40 rows repeat.


@pytest.mark.multi_backend
def test_exact_negatives_cover_the_other_classes_and_follow_the_seed():
    index = np.array([0, 20, 30, 59])
    term = exact_term(8, replacement=True)
    rows = np.concatenate([draw(term, index) for _ in range(60)])
    for anchor in index:
        seen = set(rows[rows[:, 0] == anchor, 1:].ravel())
        assert seen == set(np.flatnonzero(LABELS != LABELS[anchor]))
    for replacement in (None, True):
        first = draw(exact_term(8, seed=5, replacement=replacement), index)
        again = draw(exact_term(8, seed=5, replacement=replacement), index)
        other = draw(exact_term(8, seed=6, replacement=replacement), index)
        np.testing.assert_array_equal(first, again)
        assert (first != other).any()


@pytest.mark.multi_backend
def test_exact_labels_are_learnt_from_the_training_batches():
    term = exact_term(10, labels=None)
    bank = lambda: keras.ops.convert_to_numpy(term.label_bank)  # noqa: E731
    np.testing.assert_array_equal(bank(), -1)
    # Unseen images count as other classes; the batch's own labels are
    # used at once (0, 1, 2 share class 0), and kept only in training.
    rows = draw(term, [0, 1, 2, 20])
    assert not set(rows[:3, 1:].ravel()) & {0, 1, 2} and 20 not in rows[3, 1:]
    np.testing.assert_array_equal(bank(), -1)
    for start in range(0, 60, 12):  # One epoch: every image seen once.
        draw(term, np.arange(start, start + 12), training=True)
    np.testing.assert_array_equal(bank(), LABELS)
    rows = draw(term, np.arange(60))
    assert (LABELS[rows[:, 1:]] != LABELS[:, None]).all()


def test_preset_defaults_to_exact_negatives():
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    (term,) = kd.presets.build("crd", teacher, student)["distillation_losses"]
    assert term.negatives == "exact" and term.labels is None
    (term,) = kd.presets.build(
        "crd", teacher, student, num_data=60, labels=LABELS, num_negatives=8
    )["distillation_losses"]
    term.build([{"features": (None, 6)}], {"features": (None, 5)})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(term.label_bank), LABELS)
    (term,) = kd.presets.build("crd", teacher, student, negatives="uniform")[
        "distillation_losses"
    ]
    assert term.negatives == "uniform"


def test_preset_builds_the_official_recipe():
    builder = crd_presets._crd
    teacher, student = small_cnn(8, name="teacher"), small_cnn(4, name="student")
    [(key, term, weight)] = builder(
        [teacher],
        student,
        num_data=50000,
        feat_dim=128,
        num_negatives=16384,
        temperature=0.07,
        momentum=0.5,
        weight=0.8,
        negatives="exact",
        labels=None,
    )
    assert (key, weight) == ("crd", 0.8)
    assert (term.num_negatives, term.temperature, term.momentum, term.feat_dim) == (
        16384,
        0.07,
        0.5,
        128,
    )
    assert term.student_layer_names == ["features"]
