"""kd.data.EpochBatches / crop_flip_numpy / the Pillow JPEG decoder: the
TensorFlow-free input path (CI runs this module in a venv without TF)."""

import io
import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import training
from keras_kd.data import npz

pytestmark = pytest.mark.no_tensorflow


def _reference_crops(image, padding=4):
    """Every crop (offset dy, dx) and flip of one zero-padded image."""
    h, w = image.shape[:2]
    padded = np.zeros((h + 2 * padding, w + 2 * padding, image.shape[2]), image.dtype)
    padded[padding : padding + h, padding : padding + w] = image
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy : dy + h, dx : dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop[:, ::-1]
    return out


def test_crop_flip_numpy_is_a_padded_crop_and_flip():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (400, 6, 7, 2)).astype("uint8")
    out = kd.data.crop_flip_numpy(images, [0, 3])
    assert out.shape == images.shape and out.dtype == images.dtype
    found = []
    for image, result in zip(images, out):
        matches = [
            k
            for k, crop in _reference_crops(image).items()
            if np.array_equal(crop, result)
        ]
        assert matches, "an output is no crop/flip of its padded input"
        found.append(matches[0])
    dy, dx, flip = (np.array(v) for v in zip(*found))
    # Offsets uniform over 0..8 on each axis, flips with probability 1/2.
    assert set(dy) == set(range(9)) and set(dx) == set(range(9))
    assert 0.4 < flip.mean() < 0.6
    np.testing.assert_array_equal(out, kd.data.crop_flip_numpy(images, [0, 3]))
    assert not np.array_equal(out, kd.data.crop_flip_numpy(images, [0, 4]))


def _arrays(n=50):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 8, 8, 1)).astype("uint8")
    return x, np.arange(n, dtype="int64")  # Labels name their images.


def test_epoch_batches_follow_epoch_order_and_normalize():
    x, y = _arrays()
    mean, std = np.array([10.0], "float32"), np.array([20.0], "float32")
    ds = kd.data.EpochBatches(x, y, 16, seed=3, normalize=(mean, std))
    assert len(ds) == 4  # ceil(50 / 16): the last batch partial.
    for epoch in range(2):
        perm = np.random.default_rng([3, epoch]).permutation(50)
        labels = np.concatenate([ds[i][1] for i in range(len(ds))])
        np.testing.assert_array_equal(labels, perm)
        images, batch_labels = ds[1]
        np.testing.assert_allclose(
            images, (x[batch_labels].astype("float32") - 10.0) / 20.0
        )
        ds.on_epoch_end()
    dropped = kd.data.EpochBatches(x, y, 16, drop_remainder=True)
    assert len(dropped) == 3 and len(dropped[2][1]) == 16
    with pytest.raises(ValueError, match="do not fit"):
        kd.data.EpochBatches(x, y, 16, steps=5)


def test_epoch_batches_resume_and_augment_per_seed_and_epoch():
    x, y = _arrays()
    full = kd.data.EpochBatches(x, y, 16, seed=5, augment=True, workers=2)
    for _ in range(2):
        full.on_epoch_end()
    resumed = kd.data.EpochBatches(x, y, 16, first_epoch=2, seed=5, augment=True)
    for i in range(len(full)):
        for a, b in zip(full[i], resumed[i]):
            np.testing.assert_array_equal(a, b)
    # Batch i of epoch e is augmented with the seed (seed, e * steps + i).
    images, labels = resumed[1]
    expected = kd.data.crop_flip_numpy(x[labels], [5, 2 * 4 + 1])
    np.testing.assert_allclose(images, expected.astype("float32") / 255.0)


def test_make_dataset_numpy_and_example_index():
    x, y = _arrays()
    train = kd.data.make_dataset(
        x,
        y,
        16,
        training=True,
        seed=1,
        augment=True,
        input_pipeline="numpy",
        example_index=True,
    )
    assert isinstance(train, keras.utils.PyDataset) and len(train) == 3
    inputs, labels = train[0]
    np.testing.assert_array_equal(inputs["example_index"], labels)
    test = kd.data.make_dataset(x, y, 16, training=False, input_pipeline="numpy")
    np.testing.assert_array_equal(
        np.concatenate([test[i][1] for i in range(len(test))]), y
    )
    np.testing.assert_allclose(test[0][0], x[:16] / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="input_pipeline must be one of"):
        kd.data.resolve_input_pipeline("grain")


def test_tfdata_without_tensorflow_is_refused():
    if kd.data.tensorflow_available():
        assert kd.data.resolve_input_pipeline("auto") == "tfdata"
        pytest.skip("TensorFlow is installed here.")
    assert kd.data.resolve_input_pipeline("auto") == "numpy"
    with pytest.raises(ValueError, match="input_pipeline='numpy'"):
        kd.data.resolve_input_pipeline("tfdata")


def test_pillow_decoder_reads_npz_jpegs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    # Smooth images, so JPEG (quality 95) keeps them within a few levels.
    base = rng.integers(40, 200, (6, 1, 1, 3))
    ramp = np.arange(16)[None, :, None, None] + np.arange(16)[None, None, :, None]
    x = np.clip(base + 3 * ramp, 0, 255).astype("uint8")
    blobs = []
    for image in x:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buffer.getvalue(), "uint8"))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("int64")
    for split in ("train", "test"):
        np.savez(
            tmp_path / f"{split}.npz",
            jpeg=np.concatenate(blobs),
            offsets=offsets,
            y=np.arange(6) % 2,
        )
    decoded = npz._decode_with_pillow([b.tobytes() for b in blobs])
    assert decoded.shape == x.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - x).max() <= 8
    (x_train, y_train), _, info = kd.data.load(f"npz:{tmp_path}")
    assert info["input_shape"] == (16, 16, 3)
    # Whichever decoder the environment uses, it reads the same images.
    assert np.abs(x_train.astype(int) - decoded).max() <= 5


def _fit(tmp_path, stop_after=None):
    x, y = _arrays(40)
    y = (x.reshape(40, -1).mean(axis=1) > 127).astype("int64")
    data = training.Data.from_arrays(x, y, x[:16], y[:16])
    keras.utils.set_random_seed(0)
    model = kd.models.get("digits_cnn_small", num_classes=2, input_shape=(8, 8, 1))
    config = training.TrainConfig(epochs=4, batch_size=16, lr=1e-3)
    if stop_after is not None:
        # A kill right after the epoch's checkpoint: stop the process' fit.
        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == stop_after:
                    raise KeyboardInterrupt

        fit = model.fit

        def fit_and_kill(*args, callbacks=(), **kwargs):
            return fit(*args, callbacks=list(callbacks) + [Kill()], **kwargs)

        model.fit = fit_and_kill
    return training.fit_resumable(
        "phase",
        model,
        data,
        x,
        y,
        config,
        str(tmp_path),
        host_augment=True,
        input_pipeline="numpy",
        tensorboard=False,
        log=None,
    ), model


@pytest.mark.slow  # Also run by CI's TF-free step (no_tensorflow).
def test_fit_resumable_numpy_pipeline_resumes(tmp_path):
    result, full = _fit(tmp_path / "full")
    assert result["epochs"] == 4
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "killed", stop_after=2)
    assert not os.path.exists(tmp_path / "killed" / "phase" / "result.json")
    resumed_result, resumed = _fit(tmp_path / "killed")
    assert resumed_result["resumed_at_epoch"] == 2
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
