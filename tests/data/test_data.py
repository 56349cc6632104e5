import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import data


def write_npz(folder, name, **arrays):
    folder.mkdir(exist_ok=True)
    np.savez(folder / name, **arrays)
    return folder / name


def images(n, shape=(6, 6, 1), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, "uint8")


# Loading.


def test_digits():
    (x, y), (x_test, y_test), info = data.load("digits")
    assert x.shape == (1347, 8, 8, 1) and x_test.shape == (450, 8, 8, 1)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert x.max() == 255 and x.min() == 0
    assert info["num_classes"] == 10 and info["input_shape"] == (8, 8, 1)
    assert info["class_names"][3] == "3"
    # Stratified: every class splits 75/25 up to rounding.
    total = np.bincount(y, minlength=10) + np.bincount(y_test, minlength=10)
    assert np.all(np.abs(np.bincount(y_test, minlength=10) - total / 4) <= 1)
    (x2, _), _, _ = data.load("digits")
    (x3, _), _, _ = data.load("digits", split_seed=1)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, x3)


def test_npz_folder(tmp_path):
    x, y = images(10, (6, 6)), np.arange(10) % 3
    write_npz(tmp_path, "train.npz", x=x, y=y)
    write_npz(tmp_path, "test.npz", x=x[:4], y=y[:4].astype("int32"))
    (x_train, y_train), (x_test, y_test), info = data.load(f"npz:{tmp_path}")
    np.testing.assert_array_equal(x_train, x[..., None])
    assert y_test.dtype == np.int64 and x_test.shape == (4, 6, 6, 1)
    assert info["num_classes"] == 3 and info["class_names"] == ["0", "1", "2"]
    (tmp_path / "meta.json").write_text(json.dumps({"classes": list("abcd")}))
    info = data.load(f"npz:{tmp_path}")[2]
    assert info["num_classes"] == 4 and info["class_names"] == list("abcd")


def test_npz_numbered_parts(tmp_path):
    x, y = images(22, (4, 4, 3)), np.arange(22) % 5
    for i in range(11):  # Parts 0..10: numeric, not lexical, order.
        write_npz(
            tmp_path, f"train_{i}.npz", x=x[2 * i : 2 * i + 2], y=y[2 * i : 2 * i + 2]
        )
    write_npz(tmp_path, "test_0.npz", x=x[:3], y=y[:3])
    (x_train, y_train), (x_test, _), info = data.load(f"npz:{tmp_path}")
    np.testing.assert_array_equal(x_train, x)
    np.testing.assert_array_equal(y_train, y)
    assert len(x_test) == 3 and info["input_shape"] == (4, 4, 3)


def test_npz_jpeg(tmp_path):
    # Smooth images, so JPEG at quality 95 stays close to them.
    ramp = np.linspace(0, 255, 16).astype("uint8")
    x = np.stack([np.broadcast_to(ramp[:, None, None], (16, 16, 3))] * 3)
    encoded = [tf.io.encode_jpeg(image, quality=95).numpy() for image in x]
    offsets = np.cumsum([0] + [len(e) for e in encoded])
    jpeg = np.frombuffer(b"".join(encoded), "uint8")
    for split in ("train", "test"):
        write_npz(tmp_path, f"{split}.npz", jpeg=jpeg, offsets=offsets, y=np.arange(3))
    (x_train, y_train), _, info = data.load(f"npz:{tmp_path}")
    assert x_train.shape == (3, 16, 16, 3) and x_train.dtype == np.uint8
    assert np.abs(x_train.astype(int) - x).mean() < 2
    assert info["num_classes"] == 3


GOOD = {"x": images(4), "y": np.arange(4)}
BAD_FILES = [
    ({"y": GOOD["y"]}, "holds keys \\['y'\\]"),
    ({"x": GOOD["x"].astype("float32"), "y": GOOD["y"]}, "uint8"),
    ({"x": images(4, (6,)), "y": GOOD["y"]}, "rank 4"),
    ({"x": GOOD["x"], "y": GOOD["y"][:3]}, "4 images but 3 labels"),
    ({"x": GOOD["x"], "y": np.array([0, 1, -1, 2])}, "label -1 at index 2"),
    ({"x": GOOD["x"], "y": np.array([0.0, 1, 2, 3])}, "integer labels"),
]


@pytest.mark.parametrize("arrays, message", BAD_FILES)
def test_npz_bad_file(tmp_path, arrays, message):
    write_npz(tmp_path, "train.npz", **GOOD)
    path = write_npz(tmp_path, "test.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        data.load(f"npz:{tmp_path}")


def test_npz_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(f"npz:{tmp_path / 'missing'}")
    write_npz(tmp_path, "train.npz", **GOOD)
    with pytest.raises(FileNotFoundError, match="neither test.npz"):
        data.load(f"npz:{tmp_path}")
    write_npz(tmp_path, "test_0.npz", **GOOD)
    write_npz(tmp_path, "test_2.npz", **GOOD)
    with pytest.raises(FileNotFoundError, match="test_1.npz"):
        data.load(f"npz:{tmp_path}")
    (tmp_path / "test_2.npz").unlink()
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(ValueError, match="train.npz: label 2 .* 0..1"):
        data.load(f"npz:{tmp_path}")


def test_tfds(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    # A real (tiny) prepared dataset: `mock_data` can't serve `batch_size=-1`
    # (its split sizes are unknown, so TFDS batches by sys.maxsize and TF
    # aborts).
    class KerasKdTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(6, 6, 1)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(9),
                "test": self._generate_examples(3),
            }

        def _generate_examples(self, n):
            for i, image in enumerate(images(n)):
                yield i, {"image": image, "label": i % 3}

    calls = []
    load = tfds.load
    monkeypatch.setattr(
        tfds, "load", lambda *a, **k: calls.append((a, k)) or load(*a, **k)
    )
    (x, y), (x_test, y_test), info = data.load(
        "keras_kd_tiny_images", data_dir=str(tmp_path)
    )
    assert calls[0][0] == ("keras_kd_tiny_images",)
    # Read in batches, not whole splits (which mock_data cannot serve).
    assert "batch_size" not in calls[0][1] and calls[0][1]["as_supervised"]
    assert x.shape == (9, 6, 6, 1) and x.dtype == np.uint8
    assert sorted(x.tolist()) == sorted(images(9).tolist())
    assert y.dtype == np.int64 and len(x_test) == 3
    assert info["class_names"] == ["a", "b", "c"] and info["num_classes"] == 3
    with pytest.raises(ValueError, match="'digits', 'npz:PATH'.*not a known"):
        data.load("no_such_dataset_kd", data_dir=str(tmp_path))


# Pipelines and augmentation.


def test_make_dataset_is_seeded_and_reshuffles():
    x, y = images(50), np.arange(50)

    def epochs(seed):
        ds = data.make_dataset(x, y, 8, training=True, seed=seed, augment=True)
        return [
            np.concatenate([b[1] for b in ds.as_numpy_iterator()]) for _ in range(2)
        ]

    first, second = epochs(1), epochs(1)
    assert len(first[0]) == 48  # Last partial batch dropped.
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], epochs(2)[0])
    # Augmented images are seeded too.
    batch = [
        next(iter(data.make_dataset(x, y, 8, True, 1, augment=True)))[0]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*batch)
    assert batch[0].shape == (8, 6, 6, 1) and batch[0].dtype == tf.float32


def test_make_dataset_normalizes():
    x, y = images(30, (5, 5, 3)), np.arange(30)
    stats = data.channel_stats(x)
    np.testing.assert_allclose(stats[0], x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats[1], x.std(axis=(0, 1, 2)), rtol=1e-5)
    ds = data.make_dataset(x, y, 7, training=False, normalize=stats)
    batches = list(ds.as_numpy_iterator())
    images_out = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_allclose(images_out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(images_out.std(axis=(0, 1, 2)), 1, atol=1e-4)
    plain = next(iter(data.make_dataset(x, y, 30, training=False)))[0]
    np.testing.assert_allclose(plain, x / 255, rtol=1e-6)


def crops(image, padding):
    """All `padding` crops of `image`, and their flips, as a NumPy reference."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy : dy + height, dx : dx + width]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, ::-1]


@pytest.mark.parametrize("padding", [0, 2])
def test_augment_batch_against_numpy(padding):
    x = images(24, (5, 7, 2)).astype("float32")
    out = keras.ops.convert_to_numpy(
        data.augment_batch(x, keras.random.SeedGenerator(3), padding)
    )
    assert out.shape == x.shape
    found = []
    for image, result in zip(x, out):
        matches = [
            k for k, crop in crops(image, padding) if np.array_equal(crop, result)
        ]
        assert matches, "output is not a crop of the padded input"
        found.append(matches[0])
    assert len(set(found)) > 1  # Each image draws its own offset and flip.
    assert {flip for _, _, flip in found} == {False, True}


def test_random_crop_flip_layer():
    layer = data.RandomCropFlip(padding=2, seed=5)
    x = images(4, (6, 6, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    restored = data.RandomCropFlip.from_config(layer.get_config())
    assert restored.padding == 2 and restored.seed == 5
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(x, training=True)),
        keras.ops.convert_to_numpy(restored(x, training=True)),
    )
    # Runs in a compiled train step (unknown batch size with TensorFlow).
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            data.RandomCropFlip(),
            keras.layers.Flatten(),
            keras.layers.Dense(2, kernel_initializer="zeros"),
        ]
    )
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((4, 2)), batch_size=4, epochs=1, verbose=0)


# Class subsets.


def test_class_subset_arrays():
    x, y = np.arange(40), np.arange(40) % 4
    (xs, ys), mapping = data.class_subset((x, y), [3, 1])
    np.testing.assert_array_equal(xs, [i for i in x if i % 4 in (1, 3)])
    np.testing.assert_array_equal(ys, [1 if i % 4 == 1 else 0 for i in xs])
    np.testing.assert_array_equal(mapping.original_ids, [3, 1])
    np.testing.assert_array_equal(mapping.to_original([1, 0, 1]), [1, 3, 1])
    assert mapping.names == ["3", "1"]

    names = ["w", "x", "y", "z"]
    (xs, ys), mapping = data.class_subset(
        (x, y), ["z", "x"], max_per_class=3, seed=1, class_names=names
    )
    assert np.bincount(ys).tolist() == [3, 3] and mapping.names == ["z", "x"]
    assert np.all(np.diff(xs) > 0)  # Original order kept.
    again = data.class_subset((x, y), ["z", "x"], 3, 1, class_names=names)[0]
    other = data.class_subset((x, y), ["z", "x"], 3, 2, class_names=names)[0]
    np.testing.assert_array_equal(xs, again[0])
    assert not np.array_equal(xs, other[0])


def test_class_subset_errors():
    x, y = np.zeros(10), np.arange(10)
    with pytest.raises(ValueError, match="class 12; valid class ids: 0..9"):
        data.class_subset((x, y), [1, 12])
    with pytest.raises(ValueError, match="'cow'; valid names: \\['cat', 'dog'\\]"):
        data.class_subset((x[:2], y[:2]), ["cow"], class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="'cat'; pass class_names="):
        data.class_subset((x, y), ["cat"])
    with pytest.raises(ValueError, match="distinct"):
        data.class_subset((x, y), [1, 1])


def test_class_subset_dataset():
    x, y = np.arange(40), np.arange(40) % 4
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
    subset, mapping = data.class_subset(ds, [3, 1])
    pairs = np.array(list(subset.as_numpy_iterator()))
    np.testing.assert_array_equal(pairs[:, 0], [i for i in x if i % 4 in (1, 3)])
    np.testing.assert_array_equal(
        pairs[:, 1], [1 if i % 4 == 1 else 0 for i in pairs[:, 0]]
    )
    np.testing.assert_array_equal(mapping.original_ids, [3, 1])

    subset, _ = data.class_subset(
        ds, ["d", "b"], max_per_class=2, class_names=list("abcd")
    )
    assert [int(x) for x, _ in subset.as_numpy_iterator()] == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="'e'; valid names"):
        data.class_subset(ds, ["e"], class_names=list("abcd"))
    with pytest.raises(ValueError, match="class 4; valid class ids: 0..3"):
        data.class_subset(ds, [4], class_names=list("abcd"))
    with pytest.raises(ValueError, match="unbatched"):
        data.class_subset(ds.batch(4), [1])
