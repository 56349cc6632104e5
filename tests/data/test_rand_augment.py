"""RandAugmentCutout, MLKD's strong view, against the official PIL
operations (Jin-Ying/Multi-Level-Logit-Distillation,
mdistiller/dataset/cifar100.py)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd.data.rand_augment import OPERATIONS
from keras_kd.data.rand_augment import apply_operation
from keras_kd.data.rand_augment import cutout

pytestmark = pytest.mark.multi_backend


def pil_operation(image, name, v):
    """The official operation `name` at magnitude `v` on a PIL image."""
    from PIL import Image
    from PIL import ImageEnhance
    from PIL import ImageOps

    affine = {
        "shear_x": (1, v, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, v, 1, 0),
        "translate_x": (1, 0, v * image.size[0], 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, v * image.size[1]),
    }
    enhance = {
        "brightness": ImageEnhance.Brightness,
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
    }
    if name in affine:
        return image.transform(image.size, Image.AFFINE, affine[name])
    if name in enhance:
        return enhance[name](image).enhance(v)
    return {
        "auto_contrast": lambda: ImageOps.autocontrast(image),
        "equalize": lambda: ImageOps.equalize(image),
        "identity": lambda: image,
        "posterize": lambda: ImageOps.posterize(image, max(1, int(v))),
        "rotate": lambda: image.rotate(v),
        "solarize": lambda: ImageOps.solarize(image, v),
    }[name]()


def images(channels, n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 16, 16, channels)).astype("uint8")
    # Low-contrast images, so AutoContrast and Equalize have work to do.
    x[: n // 2] = x[: n // 2] // 4 + 90
    return x


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("k", range(len(OPERATIONS)))
def test_operations_match_pil(k, channels):
    image_module = pytest.importorskip("PIL.Image")
    name, low, high = OPERATIONS[k]
    x = images(channels, seed=k)
    v = (low + (high - low) * np.random.default_rng(k).random(len(x))).astype("float32")
    mode = "RGB" if channels == 3 else "L"
    expected = np.stack(
        [
            np.asarray(
                pil_operation(
                    image_module.fromarray(img if channels == 3 else img[..., 0], mode),
                    name,
                    float(m),
                )
            ).reshape(img.shape)
            for img, m in zip(x, v)
        ]
    )
    got = ops.convert_to_numpy(
        apply_operation(x.astype("float32"), np.full(len(x), k), v)
    )
    if name == "rotate":
        # PIL's fixed-point map may land on the next source pixel where a
        # pixel centre falls within rounding of an edge: at most 1 in 256.
        assert np.mean(np.any(got != expected, axis=-1)) <= 1 / 256
    elif name == "auto_contrast":
        # PIL truncates `i · scale + offset` computed in float64, which can
        # fall just below an integer that float32 reaches.
        np.testing.assert_allclose(got, expected, atol=1)
    else:
        np.testing.assert_array_equal(got, expected)


def test_operations_are_chosen_per_image():
    x = images(3, n=4).astype("float32")
    index = np.array([_index("identity"), _index("solarize")] * 2)
    got = ops.convert_to_numpy(apply_operation(x, index, np.zeros(4, "float32")))
    np.testing.assert_array_equal(got[0::2], x[0::2])
    np.testing.assert_array_equal(got[1::2], 255.0 - x[1::2])


def _index(name):
    return [op[0] for op in OPERATIONS].index(name)


def test_cutout_matches_pil_rectangle():
    image_module = pytest.importorskip("PIL.Image")
    draw_module = pytest.importorskip("PIL.ImageDraw")
    x = images(3, n=5)
    size = np.array([0.0, 0.4, 3.3, 7.9, 8.0], "float32")
    centre_x = np.array([5.0, 1.2, 15.9, 9.5, 16.0], "float32")
    centre_y = np.array([3.0, 16.0, 2.2, 10.1, 1.0], "float32")
    got = ops.convert_to_numpy(cutout(x.astype("float32"), size, centre_x, centre_y))
    for i in range(len(x)):
        image = image_module.fromarray(x[i])
        if size[i] > 0:  # The official Cutout returns the image at size 0.
            x0 = int(max(0, centre_x[i] - size[i] / 2.0))
            y0 = int(max(0, centre_y[i] - size[i] / 2.0))
            box = (x0, y0, min(16, x0 + size[i]), min(16, y0 + size[i]))
            draw_module.Draw(image).rectangle(box, (125, 123, 114))
        np.testing.assert_array_equal(got[i], np.asarray(image))


def test_layer_is_the_identity_at_inference_and_keeps_units():
    x = images(3, n=8).astype("float32")
    mean, std = np.array([120.0, 115.0, 100.0]), np.array([60.0, 62.0, 64.0])
    normalised = ((x - mean) / std).astype("float32")
    layer = kd.data.RandAugmentCutout(mean=mean, std=std, seed=0)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(layer(normalised, training=False)), normalised
    )
    out = ops.convert_to_numpy(layer(normalised, training=True))
    pixels = out * std + mean
    assert out.shape == x.shape
    # Back in pixel units: 8-bit integers, not all unchanged.
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    assert not np.allclose(out, normalised)


def test_layer_config_round_trip_and_checks():
    layer = kd.data.RandAugmentCutout(num_ops=3, cutout=0.25, mean=[1.0], std=[2.0])
    clone = kd.data.RandAugmentCutout.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="std"):
        kd.data.RandAugmentCutout(std=0.0)
    with pytest.raises(ValueError, match="cutout"):
        kd.data.RandAugmentCutout(cutout=2.0)
    with pytest.raises(ValueError, match="num_ops"):
        kd.data.RandAugmentCutout(num_ops=-1)
    with pytest.raises(ValueError, match="image batches"):
        layer(np.zeros((2, 4), "float32"), training=True)


def test_layer_runs_inside_a_compiled_model():
    inputs = keras.Input((8, 8, 1))
    outputs = kd.data.RandAugmentCutout(std=255.0, seed=1)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(outputs)))
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    history = model.fit(x, np.zeros((16, 2)), batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"]).all()
