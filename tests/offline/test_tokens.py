"""kd.offline token records: a language model teacher's top-k per real
token, recorded once, replayed through `RecordedTeacher` and
`SparseKLDistillation` with no live teacher."""

import os

import keras
import numpy as np
import pytest
from helpers import numpy_log_softmax
from helpers import sparse_ce
from keras import ops
from test_sequence_distillation import LENGTH
from test_sequence_distillation import VOCAB
from test_sequence_distillation import token_lm

import keras_kd as kd

FP = "tokenizer-a"


def corpus(n=10, seed=0):
    """Token ids, next tokens and a padding mask: row 1 all padding, row 0
    and row 4 end in padding."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (n, LENGTH)).astype("int32")
    mask = np.ones((n, LENGTH), "float32")
    mask[0, 3:] = 0.0
    mask[1] = 0.0
    mask[4, 1:] = 0.0
    return x, np.roll(x, -1, axis=1), mask


@pytest.fixture
def teacher():
    keras.utils.set_random_seed(1)
    return token_lm(8, "teacher")


def record(teacher, path, data=None, **kwargs):
    kwargs = {"top_k": 3, "tokenizer_fingerprint": FP, "shard_size": 4, **kwargs}
    return kd.offline.record_tokens(
        teacher, data or corpus(), str(path), verbose=0, **kwargs
    )


def test_real_tokens_only_are_stored_as_numpy_top_k(teacher, tmp_path):
    x, y, mask = corpus()
    manifest = record(teacher, tmp_path)
    assert manifest["complete"] and len(manifest["shards"]) == 3
    assert manifest["corpus"]["tokens"] == int(mask.sum()) == 39
    assert manifest["storage"]["values"] == "float16"
    assert manifest["storage"]["indices"] == "uint16"
    arrays = kd.offline.Record.load(str(tmp_path)).arrays[0]
    np.testing.assert_array_equal(arrays["num_tokens"], mask.sum(1))
    assert arrays["teacher_topk_log_probs"].shape == (39, 3)
    assert arrays["teacher_topk_indices"].dtype == np.uint16
    log_p = numpy_log_softmax(teacher.predict(x, verbose=0)[mask != 0])
    indices = np.argsort(-log_p, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(arrays["teacher_topk_indices"], indices)
    top = np.take_along_axis(log_p, indices, -1)
    np.testing.assert_allclose(arrays["teacher_topk_log_probs"], top, atol=2e-3)
    tail = np.log1p(-np.exp(top).sum(-1))
    np.testing.assert_allclose(arrays["teacher_tail_log_mass"], tail, atol=5e-3)
    size = kd.offline.record_size(str(tmp_path))
    assert size["tokens"] == 39 and size["payload_bytes_per_token"] == 3 * 4 + 2
    assert size["bytes_per_token"] > size["payload_bytes_per_token"]


def test_another_teacher_tokenizer_or_corpus_is_refused(teacher, tmp_path):
    record(teacher, tmp_path)
    keras.utils.set_random_seed(2)
    other = token_lm(8, "teacher")
    x, y, mask = corpus()
    other_corpus = corpus(seed=1)
    cases = [
        (dict(teacher=other), "another teacher weights"),
        (dict(tokenizer_fingerprint="tokenizer-b"), "another tokenizer"),
        (dict(data=other_corpus), "another corpus"),
    ]
    for change, message in cases:
        kwargs = {"teacher": teacher, **change}
        with pytest.raises(ValueError, match=message) as error:
            record(kwargs.pop("teacher"), tmp_path, **kwargs)
        assert "overwrite=True" in str(error.value)
    # The replay checks the tokenizer and the corpus, and the teacher when
    # given (a model or its sha256).
    path = str(tmp_path)
    with pytest.raises(ValueError, match="another tokenizer.*'tokenizer-a'"):
        kd.offline.TokenReplayPyDataset(x, y, mask, 4, path, "tokenizer-b")
    with pytest.raises(ValueError, match="another corpus"):
        kd.offline.TokenReplayPyDataset(*other_corpus, 4, path, FP)
    with pytest.raises(ValueError, match="another teacher weights"):
        kd.offline.TokenReplayPyDataset(x, y, mask, 4, path, FP, teacher=other)
    with pytest.raises(ValueError, match="another corpus"):
        kd.offline.token_dataset(x, y, mask, 4, path, FP, corpus_fingerprint="c")
    kd.offline.TokenReplayPyDataset(x, y, mask, 4, path, FP, teacher=teacher)
    manifest = record(other, tmp_path, overwrite=True)
    sha = kd.offline.manifest.weights_fingerprint(other)
    assert manifest["teachers"][0]["sha256"] == sha


def test_a_corrupted_shard_is_refused(teacher, tmp_path):
    manifest = record(teacher, tmp_path)
    name = sorted(manifest["shards"])[1]
    with open(os.path.join(tmp_path, name), "r+b") as f:
        f.seek(-20, os.SEEK_END)
        byte = f.read(1)
        f.seek(-20, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"Shard '{name}'.*is corrupted"):
        kd.offline.TokenReplayPyDataset(*corpus(), 4, str(tmp_path), FP)
    with pytest.raises(ValueError, match="is corrupted"):
        kd.offline.token_dataset(*corpus(), 4, str(tmp_path), FP)


@pytest.mark.multi_backend
def test_replayed_batches_carry_the_record_on_real_tokens(teacher, tmp_path):
    x, y, mask = corpus()
    record(teacher, tmp_path, dtype="float32")
    py = kd.offline.TokenReplayPyDataset(x, y, mask, 4, str(tmp_path), FP, epochs=2)
    ds = kd.offline.token_dataset(x, y, mask, 4, str(tmp_path), FP, epochs=2)
    batches = list(ds.as_numpy_iterator())
    assert len(py) == len(batches) == 6 and py.steps == 3
    log_p = numpy_log_softmax(teacher.predict(x, verbose=0))
    seen = []
    for i, (inputs, labels, weights) in enumerate(batches):
        py_inputs, py_labels, py_weights = py[i]
        for key, value in inputs.items():
            np.testing.assert_array_equal(value, py_inputs[key])
        np.testing.assert_array_equal(labels, py_labels)
        rows = [int(np.flatnonzero((x == row).all(1))[0]) for row in inputs["inputs"]]
        np.testing.assert_array_equal(weights, mask[rows])
        real = weights != 0
        got = np.take_along_axis(log_p[rows], inputs["teacher_topk_indices"], axis=-1)[
            real
        ]
        np.testing.assert_allclose(
            inputs["teacher_topk_log_probs"][real], got, atol=1e-5
        )
        seen += rows if i < 3 else []
    assert sorted(seen) == list(range(10))


@pytest.mark.multi_backend
def test_record_replay_fit_matches_numpy(teacher, tmp_path):
    # 8 rows, two whole batches of 4: one train function to compile (a
    # partial last batch compiles another); partial batches are replayed in
    # test_replayed_batches_carry_the_record_on_real_tokens.
    x, y, mask = corpus(8)
    record(teacher, tmp_path, (x, y, mask))
    keras.utils.set_random_seed(0)
    student = token_lm(4, "student")
    data = kd.offline.TokenReplayPyDataset(x, y, mask, 4, str(tmp_path), FP)
    inputs, labels, weights = data[0]
    real = weights != 0
    for handling in ("zero", "symmetric_uniform"):
        distiller = kd.Distiller(
            kd.offline.RecordedTeacher(str(tmp_path)),
            student,
            kd.losses.SparseKLDistillation(1.0, handling),
            student_loss_weight=0.0,
        )
        distiller.compile()
        y_pred = distiller(inputs, training=True)
        loss = distiller.compute_loss(inputs, labels, y_pred, sample_weight=weights)
        z_s = ops.convert_to_numpy(y_pred["student"]["logits"])
        want = np_record_kl(inputs, z_s, handling)[real].mean()
        np.testing.assert_allclose(ops.convert_to_numpy(loss), want, rtol=1e-5)
    # Trained with the student's own loss on the next tokens, under the
    # same mask, and no teacher in memory.
    trained = kd.Distiller(
        kd.offline.RecordedTeacher(str(tmp_path)),
        student,
        kd.losses.SparseKLDistillation(1.0),
        student_loss_weight=0.5,
    )
    trained.compile(keras.optimizers.Adam(1e-2), loss=sparse_ce())
    before = [w.copy() for w in student.get_weights()]
    history = trained.fit(data, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    after = student.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def np_record_kl(inputs, z_s, handling):
    """The sparse KL (T = 1) per token from a replayed batch, in float64."""
    log_p = np.float64(inputs["teacher_topk_log_probs"])
    log_q = np.take_along_axis(
        numpy_log_softmax(np.float64(z_s)), inputs["teacher_topk_indices"], -1
    )
    if handling == "zero":
        p_hat = np.exp(log_p) / np.exp(log_p).sum(-1, keepdims=True)
        return np.sum(p_hat * (np.log(p_hat) - log_q), -1)
    r = np.exp(np.float64(inputs["teacher_tail_log_mass"]))
    r_q = 1.0 - np.exp(log_q).sum(-1)
    tail = r * np.log(np.where(r > 0, r, 1.0) / r_q)  # Padding: r = 0.
    return np.sum(np.exp(log_p) * (log_p - log_q), -1) + tail


@pytest.mark.multi_backend
def test_k_equal_to_the_vocabulary_replays_the_dense_kl(teacher, tmp_path):
    """A float32 record of every token: the replayed term is the live
    `LogitsDistillation` (same student, same batch)."""
    x, y, mask = corpus()
    record(teacher, tmp_path, top_k=VOCAB, dtype="float32", temperature=2.0)
    data = kd.offline.TokenReplayPyDataset(x, y, mask, 10, str(tmp_path), FP)
    inputs, labels, weights = data[0]
    keras.utils.set_random_seed(0)
    student = token_lm(4, "student")
    values = {}
    for handling in ("zero", "symmetric_uniform"):
        term = kd.losses.SparseKLDistillation(2.0, handling)
        recorded = kd.Distiller(
            kd.offline.RecordedTeacher(str(tmp_path)),
            student,
            term,
            student_loss_weight=0.0,
        )
        recorded.compile()
        y_pred = recorded(inputs, training=True)
        values[handling] = ops.convert_to_numpy(
            recorded.compute_loss(inputs, labels, y_pred, sample_weight=weights)
        )
    live = kd.Distiller(
        teacher, student, kd.losses.LogitsDistillation(2.0), student_loss_weight=0.0
    )
    live.compile()
    y_pred = live(inputs["inputs"], training=True)
    dense = ops.convert_to_numpy(
        live.compute_loss(inputs["inputs"], labels, y_pred, sample_weight=weights)
    )
    for value in values.values():
        np.testing.assert_allclose(value, dense, rtol=1e-5, atol=1e-6)


def test_terms_a_token_record_cannot_feed_are_refused(teacher, tmp_path):
    record(teacher, tmp_path, temperature=2.0)
    student = token_lm(4, "student")
    path = str(tmp_path)
    with pytest.raises(ValueError, match="use kd.losses.SparseKLDistillation"):
        kd.Distiller(
            kd.offline.RecordedTeacher(path),
            student,
            kd.losses.LogitsDistillation(2.0),
        )
    with pytest.raises(ValueError, match="holds the tail at temperature 2.0"):
        kd.Distiller(
            kd.offline.RecordedTeacher(path),
            student,
            kd.losses.SparseKLDistillation(1.0, "symmetric_uniform"),
        )
    # "zero" is exact at any temperature.
    kd.Distiller(
        kd.offline.RecordedTeacher(path),
        student,
        kd.losses.SparseKLDistillation(1.0, "zero"),
    )
    with pytest.raises(ValueError, match="reads a token record's top-k"):
        kd.Distiller(teacher, student, kd.losses.SparseKLDistillation())


def test_sparse_kl_report(teacher, tmp_path):
    data = corpus()
    keras.utils.set_random_seed(0)
    student = token_lm(4, "student")
    record(teacher, tmp_path / "all", top_k=VOCAB, dtype="float32")
    report = kd.offline.sparse_kl_report(
        str(tmp_path / "all"), teacher, student, data, num_sequences=10
    )
    for handling in ("zero", "symmetric_uniform"):
        assert report[handling]["relative_error"] < 1e-5
    record(teacher, tmp_path / "k2", top_k=2)
    report = kd.offline.sparse_kl_report(
        str(tmp_path / "k2"), teacher, student, data, num_sequences=10
    )
    assert report["payload_bytes_per_token"] == 2 * 4 + 2
    assert report["dense_kl"] > 0
    for handling in ("zero", "symmetric_uniform"):
        assert report[handling]["mean_absolute_error"] > 1e-3
    with pytest.raises(ValueError, match="another teacher weights"):
        kd.offline.sparse_kl_report(str(tmp_path / "k2"), student, student, data)


def test_tokenizer_fingerprint():
    a = kd.offline.tokenizer_fingerprint(["a", "b"])
    assert a == kd.offline.tokenizer_fingerprint(["a", "b"])
    assert a != kd.offline.tokenizer_fingerprint(["b", "a"])
    layer = keras.layers.StringLookup(vocabulary=["a", "b"])
    assert len(kd.offline.tokenizer_fingerprint(layer)) == 64
    with pytest.raises(ValueError, match="get_vocabulary"):
        kd.offline.tokenizer_fingerprint(3)


def test_keras_hub_gpt2_records_and_distils_without_its_teacher(tmp_path):
    """A random GPT-2 from config (test_keras_hub.py's) as the teacher:
    keras_hub's `{"token_ids", "padding_mask"}` inputs with the next-token
    weights, recorded, then a student distilled from the record alone."""
    pytest.importorskip("keras_hub")
    from test_keras_hub import gpt2

    keras.utils.set_random_seed(0)
    teacher, student = gpt2(2, 16, "teacher"), gpt2(1, 8, "student")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 32, (6, 8)).astype("int32")
    padding = np.ones((6, 8), bool)
    padding[0, 5:] = False
    padding[1] = False
    x = {"token_ids": tokens, "padding_mask": padding}
    data = (x, np.roll(tokens, -1, axis=1), padding.astype("float32"))
    path = str(tmp_path)
    manifest = record(teacher, path, data=data, top_k=4, corpus_fingerprint="toy")
    assert manifest["corpus"]["tokens"] == 6 * 8 - 3 - 8
    del teacher
    distiller = kd.Distiller(
        kd.offline.RecordedTeacher(path),
        student,
        kd.losses.SparseKLDistillation(1.0, "symmetric_uniform"),
    )
    # Eager, as in test_keras_hub.py: tracing GPT-2's step costs seconds.
    distiller.compile(keras.optimizers.Adam(1e-3), loss=sparse_ce(), run_eagerly=True)
    before = [w.copy() for w in student.get_weights()]
    replay = kd.offline.TokenReplayPyDataset(
        *data, 3, path, FP, corpus_fingerprint="toy"
    )
    history = distiller.fit(replay, epochs=1, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    after = student.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
