"""AFD and RTK against NumPy computations from the terms' own weights."""

import math

import keras
import numpy as np
import pytest
from helpers import np_attention
from helpers import numpy_softmax
from helpers import sparse_ce
from helpers import tiny_resnet
from keras import layers
from keras import ops

import keras_kd as kd
from keras_kd.models import block_layer_names


def test_block_layer_names_finds_add_outputs():
    post = tiny_resnet(4, 2, "post")
    assert block_layer_names(post) == ["block1_1", "block1_2", "block2_1", "block2_2"]
    pre = tiny_resnet(4, 1, "pre", preactivation=True)
    assert block_layer_names(pre) == ["block1_1", "block2_1"]
    plain = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="no keras.layers.Add"):
        block_layer_names(plain)


# --- NumPy reference ---------------------------------------------------------


def np_weights(layer):
    return [ops.convert_to_numpy(w).astype("float64") for w in layer.weights]


def np_dense_bn(x, stack):
    """Dense → BN in training mode (batch statistics), optional ReLU."""
    kernel, bias = np_weights(stack.layers[0])
    gamma, beta = np_weights(stack.layers[1])[:2]
    h = x @ kernel + bias
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + stack.layers[1].epsilon) * gamma + beta
    return np.maximum(h, 0) if len(stack.layers) == 3 else h


def np_logits(network, query_maps, key_maps):
    gap = lambda f: f.astype("float64").mean(axis=(1, 2))
    q = np.stack(
        [np_dense_bn(gap(f), s) for f, s in zip(query_maps, network.query_layers)], 1
    )
    k = np.stack(
        [np_dense_bn(gap(f), s) for f, s in zip(key_maps, network.key_layers)], 1
    )
    b, n_k, d = k.shape
    keys = np_dense_bn(k.reshape(-1, d), network.bilinear).reshape(b, n_k, -1, d)
    p_q, p_k = np_weights(network)[:2]
    return (np.einsum("bkqd,bqd->bqk", keys, q) + p_q @ p_k.T) / math.sqrt(d)


def np_loss(network, query_maps, key_maps, size_rule, num_keys=None):
    """`Σ_q Σ_k α_{q,k} · mean_pixels((v_k − v_q)²)` per sample."""
    logits = np_logits(network, query_maps, key_maps)
    if num_keys is not None:
        kth = np.sort(logits, axis=-1)[..., -num_keys][..., None]
        logits = np.where(logits >= kth, logits, -np.inf)
    attention = numpy_softmax(logits)
    distances = np.zeros(attention.shape)
    for i, f_q in enumerate(query_maps):
        for j, f_k in enumerate(key_maps):
            size = size_rule(f_q.shape[1:3], f_k.shape[1:3])
            diff = np_attention(f_k, size, pool="energy") - np_attention(
                f_q, size, pool="energy"
            )
            distances[:, i, j] = (diff**2).mean(-1)
    return (attention * distances).sum(axis=(1, 2)), attention


def to_teacher_size(query, key):
    return tuple(query)


def to_smaller_size(query, key):
    return tuple(map(min, query, key))


def random_features(seed):
    """Two teachers (different shapes) and a student, 8×8 / 4×4 / 2×2 maps."""
    rng = np.random.default_rng(seed)
    maps = lambda *shapes: {
        f"f{i}": rng.normal(size=(6,) + s).astype("float32")
        for i, s in enumerate(shapes)
    }
    t1 = maps((8, 8, 4), (4, 4, 6))
    t2 = maps((4, 4, 3), (2, 2, 5))
    s = maps((8, 8, 2), (4, 4, 3), (2, 2, 5))
    return [t1, t2], s


def build_and_randomise(term, teachers, student, seed=3):
    shapes = lambda d: {k: (None,) + v.shape[1:] for k, v in d.items()}
    term.build([shapes(t) for t in teachers], shapes(student))
    rng = np.random.default_rng(seed)
    for v in term.trainable_weights:
        v.assign(rng.normal(scale=0.5, size=v.shape))


def run(term, teachers, student, weights):
    tensors = lambda d: {k: ops.convert_to_tensor(v) for k, v in d.items()}
    value = term(
        [tensors(t) for t in teachers],
        tensors(student),
        teacher_weights=weights,
        training=True,
    )
    return ops.convert_to_numpy(value)


T_NAMES, S_NAMES = ["f0", "f1"], ["f0", "f1", "f2"]


def test_afd_matches_numpy_two_teachers():
    teachers, student = random_features(0)
    term = kd.losses.AttentionFeatureDistillation(T_NAMES, S_NAMES, qk_dim=8)
    build_and_randomise(term, teachers, student)
    got = run(term, teachers, student, [0.3, 0.7])
    expected = 0
    for w, t, network in zip([0.3, 0.7], teachers, term.meta_networks):
        t_maps = [t[n] for n in T_NAMES]
        s_maps = [student[n] for n in S_NAMES]
        loss, _ = np_loss(network, t_maps, s_maps, to_teacher_size)
        expected = expected + w * loss
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert len(term.meta_networks) == 2


@pytest.mark.parametrize("query_side", ["student", "teacher"])
def test_rtk_matches_numpy(query_side):
    teachers, student = random_features(1)
    term = kd.losses.RepresentativeTeacherKeys(
        T_NAMES, S_NAMES, qk_dim=8, num_keys=2, query_side=query_side
    )
    build_and_randomise(term, teachers, student)
    got = run(term, teachers, student, [0.5, 0.5])
    expected = 0
    for t, network in zip(teachers, term.meta_networks):
        t_maps = [t[n] for n in T_NAMES]
        s_maps = [student[n] for n in S_NAMES]
        if query_side == "student":
            loss, att = np_loss(network, s_maps, t_maps, to_smaller_size, 2)
        else:
            loss, att = np_loss(network, t_maps, s_maps, to_teacher_size, 2)
        assert ((att > 0).sum(-1) == 2).all()
        expected = expected + 0.5 * loss
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_rtk_attention_keeps_top_k_keys_and_rows_sum_to_one():
    logits = np.random.default_rng(2).normal(size=(4, 3, 5)).astype("float32") * 3
    term = kd.losses.RepresentativeTeacherKeys(
        ["a"] * 5, ["b"], num_keys=2, query_side="student"
    )
    att = ops.convert_to_numpy(term.attention(ops.convert_to_tensor(logits)))
    top2 = np.argsort(logits, axis=-1)[..., -2:]
    kept = np.zeros(logits.shape, bool)
    np.put_along_axis(kept, top2, True, axis=-1)
    assert (att[~kept] == 0).all() and (att[kept] > 0).all()
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-6)
    expected = numpy_softmax(np.where(kept, logits, -np.inf))
    np.testing.assert_allclose(att, expected, rtol=1e-5, atol=1e-7)


def test_rtk_teacher_side_with_every_key_is_afd():
    teachers, student = random_features(4)
    teachers = teachers[:1]
    afd = kd.losses.AttentionFeatureDistillation(T_NAMES, S_NAMES, qk_dim=8)
    rtk = kd.losses.RepresentativeTeacherKeys(
        T_NAMES, S_NAMES, qk_dim=8, num_keys=3, query_side="teacher"
    )
    build_and_randomise(afd, teachers, student)
    build_and_randomise(rtk, teachers, student)
    rtk.set_weights(afd.get_weights())
    np.testing.assert_allclose(
        run(rtk, teachers, student, [1.0]),
        run(afd, teachers, student, [1.0]),
        rtol=1e-6,
    )


def test_afd_under_mixed_precision_computes_in_float32():
    teachers, student = random_features(5)
    teachers = teachers[:1]
    keras.config.set_dtype_policy("mixed_float16")
    try:
        term = kd.losses.RepresentativeTeacherKeys(T_NAMES, S_NAMES, qk_dim=8)
        build_and_randomise(term, teachers, student)
        half = lambda d: {k: ops.cast(v, "float16") for k, v in d.items()}
        got = term(
            [half(teachers[0])], half(student), teacher_weights=[1.0], training=True
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    rounded = lambda d: {k: v.astype("float16").astype("float32") for k, v in d.items()}
    expected = run(term, [rounded(teachers[0])], rounded(student), [1.0])
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5)


def test_bad_inputs_raise_before_training():
    with pytest.raises(ValueError, match="num_keys"):
        kd.losses.RepresentativeTeacherKeys(["a", "b"], ["c", "d", "e"], num_keys=3)
    with pytest.raises(ValueError, match="num_keys"):
        kd.losses.RepresentativeTeacherKeys(
            ["a", "b", "c"], ["d", "e"], num_keys=3, query_side="teacher"
        )
    with pytest.raises(ValueError, match="query_side"):
        kd.losses.RepresentativeTeacherKeys(["a"], ["b"], num_keys=1, query_side="both")
    with pytest.raises(ValueError, match="at least one"):
        kd.losses.AttentionFeatureDistillation([], ["b"])
    term = kd.losses.AttentionFeatureDistillation(["a"], ["b"])
    with pytest.raises(ValueError, match="feature maps"):
        term.build([{"a": (None, 4, 4, 8)}], {"b": (None, 16)})


def test_config_round_trip():
    for term in [
        kd.losses.AttentionFeatureDistillation(["a", "b"], ["c"], qk_dim=16),
        kd.losses.RepresentativeTeacherKeys(
            ["a", "b"], ["c"], qk_dim=16, num_keys=1, query_side="teacher"
        ),
    ]:
        restored = type(term).from_config(term.get_config())
        assert restored.get_config() == term.get_config()
        assert restored.query_side == term.query_side


def test_trains_on_digits_meta_networks_learn_teacher_frozen(digits):
    x_train, _, y_train, _ = digits
    keras.utils.set_random_seed(0)
    teacher = tiny_resnet(8, 2, "teacher")
    student = tiny_resnet(4, 1, "student")
    names = block_layer_names(teacher), block_layer_names(student)
    terms = [
        kd.losses.AttentionFeatureDistillation(*names, qk_dim=16),
        kd.losses.RepresentativeTeacherKeys(*names, qk_dim=16),
    ]
    distiller = kd.Distiller(
        teacher,
        student,
        [kd.losses.LogitsDistillation(4.0)] + terms,
        distillation_loss_weights=[0.9, 100.0, 100.0],
        weighting="additive",
        student_loss_weight=1.0,
    )
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9), sparse_ce())
    teacher_before = [w.copy() for w in teacher.get_weights()]
    meta_before = [
        [ops.convert_to_numpy(w).copy() for w in term.trainable_weights]
        for term in terms
    ]
    # Two whole batches: one compiled step, every weight's gradient seen.
    history = distiller.fit(
        x_train[:256], y_train[:256], epochs=1, batch_size=128, verbose=0
    )
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    for term, before in zip(terms, meta_before):
        assert np.isfinite(history.history[term.name]).all()
        # Dense biases before a BN, and the bilinear BN's beta (it shifts
        # every key of a query alike, which the softmax ignores), get no
        # gradient; every other meta-network weight must learn.
        learning = [
            (w, b)
            for w, b in zip(term.trainable_weights, before)
            if w.name in ("kernel", "gamma", "query_position", "key_position")
        ]
        assert len(learning) == 2 + 2 * (4 + 2 + 1)
        for w, b in learning:
            assert np.abs(ops.convert_to_numpy(w) - b).max() > 1e-4, w.path
