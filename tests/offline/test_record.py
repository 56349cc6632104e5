"""kd.offline recording: storage, manifest, resume, checksums."""

import json
import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.offline import store


def tiny_net(width, name, classes=10, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


def toy_data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 8, 8, 1)).astype("uint8"),
        rng.integers(0, 10, n).astype("int64"),
    )


def numpy_crop_flip(image, offset, flip, padding):
    """One image, by slicing (the reference for the vectorised applier)."""
    h, w = image.shape[:2]
    padded = np.zeros((h + 2 * padding, w + 2 * padding) + image.shape[2:], image.dtype)
    padded[padding : padding + h, padding : padding + w] = image
    crop = padded[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
    return crop[:, ::-1] if flip else crop


def numpy_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_crop_flip_applier_matches_slicing():
    x, _ = toy_data(20)
    spec = kd.offline.CropFlip(padding=2, normalize=([10.0], [50.0]))
    params = spec.sample(seed=3, epoch=1, num_examples=20)
    assert params["flip"].any() and not params["flip"].all()
    assert params["offsets"].min() == 0 and params["offsets"].max() == 4
    got = spec.apply(x, params)
    want = np.stack(
        [
            numpy_crop_flip(x[i], params["offsets"][i], params["flip"][i], 2)
            for i in range(20)
        ]
    ).astype("float32")
    np.testing.assert_array_equal(got, (want - 10.0) / 50.0)
    other = spec.sample(seed=3, epoch=2, num_examples=20)
    assert not np.array_equal(other["offsets"], params["offsets"])


def test_full_storage_holds_float16_weighted_mean_logits(tmp_path):
    x, y = toy_data()
    teachers = [tiny_net(4, "t0", seed=0), tiny_net(4, "t1", seed=1)]
    spec = kd.offline.CropFlip(padding=1)
    manifest = kd.offline.record(
        teachers,
        (x, y),
        spec,
        epochs=2,
        path=str(tmp_path),
        seed=0,
        teacher_weights=[3.0, 1.0],
        shard_size=20,
        verbose=0,
    )
    assert manifest["complete"] and len(manifest["shards"]) == 6
    record = kd.offline.Record.load(str(tmp_path))
    for epoch in range(2):
        params = spec.sample(0, epoch, len(x))
        np.testing.assert_array_equal(
            record.arrays[epoch]["offsets"], params["offsets"]
        )
        images = spec.apply(x, params)
        want = 0.75 * teachers[0].predict(images, verbose=0) + 0.25 * teachers[
            1
        ].predict(images, verbose=0)
        stored = record.arrays[epoch]["teacher_logits"]
        assert stored.dtype == np.float16
        np.testing.assert_allclose(stored.astype("float32"), want, rtol=2e-3, atol=2e-3)
    for key in (
        "keras_kd_version",
        "teachers",
        "dataset",
        "augmentation",
        "seed",
        "epochs",
        "storage",
    ):
        assert key in manifest
    assert manifest["dataset"]["size"] == 50
    assert manifest["teachers"][0]["weight"] == 0.75


def test_top_k_storage_matches_numpy(tmp_path):
    x, y = toy_data(30)
    teacher = tiny_net(4, "t")
    spec = kd.offline.CropFlip(padding=1)
    kd.offline.record(
        teacher,
        (x, y),
        spec,
        1,
        str(tmp_path),
        seed=0,
        top_k=3,
        temperature=2.0,
        verbose=0,
    )
    record = kd.offline.Record.load(str(tmp_path))
    images = spec.apply(x, spec.sample(0, 0, 30))
    probs = numpy_softmax(teacher.predict(images, verbose=0) / 2.0)
    order = np.argsort(-probs, axis=-1)[:, :3]
    np.testing.assert_array_equal(record.arrays[0]["teacher_topk_indices"], order)
    np.testing.assert_allclose(
        record.arrays[0]["teacher_topk_probs"].astype("float32"),
        np.take_along_axis(probs, order, -1),
        atol=1e-3,
    )
    tail = 1 - np.take_along_axis(probs, order, -1).sum(-1)
    assert abs(record.manifest["tail_mass"]["max"] - tail.max()) < 1e-5


def test_manifest_mismatch_is_refused(tmp_path):
    x, y = toy_data(20)
    teacher = tiny_net(4, "t")
    spec = kd.offline.CropFlip(padding=1)
    path = str(tmp_path)
    kd.offline.ensure_record(teacher, (x, y), spec, 1, path, seed=0, verbose=0)
    mtime = os.path.getmtime(os.path.join(path, "manifest.json"))
    kd.offline.ensure_record(teacher, (x, y), spec, 1, path, seed=0, verbose=0)
    assert os.path.getmtime(os.path.join(path, "manifest.json")) == mtime
    cases = [
        ((tiny_net(4, "t", seed=5), (x, y), spec, 0), "teacher weights"),
        ((teacher, (x[::-1], y[::-1]), spec, 0), "data"),
        ((teacher, (x, y), kd.offline.CropFlip(padding=2), 0), "augmentation"),
        ((teacher, (x, y), spec, 1), "seed"),
    ]
    for (model, data, aug, seed), field in cases:
        with pytest.raises(ValueError, match=f"other {field}"):
            kd.offline.ensure_record(model, data, aug, 1, path, seed=seed, verbose=0)
    manifest = kd.offline.ensure_record(
        teacher, (x, y), spec, 1, path, seed=1, overwrite=True, verbose=0
    )
    assert manifest["seed"] == 1


def test_killed_recording_resumes_identically(tmp_path, monkeypatch):
    x, y = toy_data(60)
    teacher = tiny_net(4, "t")
    spec = kd.offline.CropFlip(padding=1)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    args = dict(epochs=2, seed=0, shard_size=20, verbose=0)
    kd.offline.record(teacher, (x, y), spec, path=whole, **args)

    written = []
    write = store.write_shard

    def killed_after_two(path, name, arrays):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        written.append(name)
        return write(path, name, arrays)

    monkeypatch.setattr(store, "write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        kd.offline.record(teacher, (x, y), spec, path=cut, **args)
    with open(os.path.join(cut, "manifest.json")) as f:
        partial = json.load(f)
    assert not partial["complete"] and sorted(partial["shards"]) == written
    with pytest.raises(ValueError, match="incomplete"):
        kd.offline.Record.load(cut)
    monkeypatch.setattr(store, "write_shard", write)
    resumed = []
    monkeypatch.setattr(
        store, "write_shard", lambda p, n, a: resumed.append(n) or write(p, n, a)
    )
    kd.offline.record(teacher, (x, y), spec, path=cut, **args)
    assert len(resumed) == 4 and not set(resumed) & set(written)
    a, b = kd.offline.Record.load(whole), kd.offline.Record.load(cut)
    assert a.manifest["shards"] == b.manifest["shards"]  # Same sha256s.
    for epoch in range(2):
        for key in a.arrays[epoch]:
            np.testing.assert_array_equal(a.arrays[epoch][key], b.arrays[epoch][key])


def test_corrupted_shard_is_detected(tmp_path):
    x, y = toy_data(20)
    path = str(tmp_path)
    kd.offline.record(
        tiny_net(4, "t"),
        (x, y),
        kd.offline.CropFlip(1),
        1,
        path,
        seed=0,
        shard_size=10,
        verbose=0,
    )
    shard = os.path.join(path, "e0000_000000010.npz")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="e0000_000000010.npz.*corrupted"):
        kd.offline.dataset(x, y, 10, record=path)
    with pytest.raises(ValueError, match="corrupted"):
        kd.offline.ReplayPyDataset(x, y, 10, record=path)


def test_bad_arguments_are_refused(tmp_path):
    x, y = toy_data(20)
    teacher = tiny_net(4, "t")
    spec = kd.offline.CropFlip(1)
    with pytest.raises(ValueError, match="top_k must be an integer in"):
        kd.offline.record(
            teacher, (x, y), spec, 1, str(tmp_path), 0, top_k=10, verbose=0
        )
    with pytest.raises(ValueError, match="epochs must be a positive"):
        kd.offline.record(teacher, (x, y), spec, 0, str(tmp_path), 0)
    with pytest.raises(ValueError, match="CropFlip"):
        kd.offline.record(teacher, (x, y), "crop", 1, str(tmp_path), 0)


def test_a_softmax_teacher_is_recorded_as_its_log_probabilities(tmp_path):
    """As the live Distiller reads it (a record of its probabilities, as
    earlier versions stored, is refused: the manifest names the targets)."""
    logits_net = tiny_net(4, "teacher", seed=1)
    teacher = keras.Model(
        logits_net.inputs, keras.layers.Softmax()(logits_net.outputs[0])
    )
    x, y = toy_data(16)
    spec = kd.offline.CropFlip(padding=0, flip=False)
    kd.offline.record(teacher, (x, y), spec, 1, str(tmp_path), seed=0, verbose=0)
    record = kd.offline.Record.load(str(tmp_path))
    assert record.manifest["teachers"][0]["targets"] == "log_probabilities"
    probabilities = teacher.predict(spec.apply(x, spec.sample(0, 0, 16)), verbose=0)
    np.testing.assert_allclose(
        record.arrays[0]["teacher_logits"].astype("float32"),
        np.log(probabilities),
        rtol=2e-3,
        atol=2e-3,
    )
