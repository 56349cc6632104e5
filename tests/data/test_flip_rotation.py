"""`kd.data.flip_rotation` (torchvision's flip + ±15° rotation) and
`kd.data.resize_images` (28x28 → 32x32): the reffakd_fashion protocol's."""

import numpy as np
from helpers import half_pixel_bilinear
from keras import ops

from keras_kd import data

BACKGROUND, BAR, FILL = 0.5, 2.0, -0.75  # Exact in float32.
# Large enough that the bar's angle is measured within 0.5°.
SIZE = 96


def bar_images(n):
    """A bar from near the centre to near the right edge, 2 pixels thick."""
    x = np.full((n, SIZE, SIZE, 1), BACKGROUND, "float32")
    x[:, SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 + 4 : SIZE - 2] = BAR
    return x


def bar_angles(images):
    """Per image: whether the bar points left (flipped) and its angle in
    degrees from the horizontal (counter-clockwise positive)."""
    flipped, angles = [], []
    rows, cols = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    for image in images[..., 0]:
        bar = image == BAR
        row, col = rows[bar].mean(), cols[bar].mean()
        flipped.append(col < 0)
        angles.append(np.degrees(np.arctan2(-row, abs(col))) * (1 if col > 0 else -1))
    return np.array(flipped), np.array(angles)


def test_flip_rotation_flips_half_and_rotates_within_15_degrees():
    x = bar_images(96)
    out = ops.convert_to_numpy(data.flip_rotation(15, FILL, seed=3)(x, training=True))
    assert out.shape == x.shape
    # Nearest neighbour: no new values, only the rotated-in corners' fill.
    assert set(np.unique(out)) <= {BACKGROUND, BAR, FILL}
    flipped, angles = bar_angles(out)
    assert 24 <= flipped.sum() <= 72
    assert np.abs(angles).max() <= 15.5  # Measured within 0.5°.
    assert np.abs(angles).max() > 13  # Rotated over the whole range.
    for turned in (angles[flipped], angles[~flipped]):
        # Each image's flip and angle are drawn independently.
        assert (turned > 2).any() and (turned < -2).any()
    # Turned by more than 5°, each image takes the fill in its corners.
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert np.all((corners == FILL).any(axis=1)[np.abs(angles) > 5])


def test_flip_rotation_is_the_identity_at_inference():
    x = bar_images(4)
    x[1] = np.random.default_rng(0).normal(size=(SIZE, SIZE, 1))
    out = ops.convert_to_numpy(data.flip_rotation(15, FILL, seed=3)(x, training=False))
    np.testing.assert_array_equal(out, x)


def test_resize_images_is_rounded_bilinear():
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype="uint8")
    got = data.resize_images(x, (32, 32), batch_size=2)
    assert got.shape == (5, 32, 32, 1) and got.dtype == np.uint8
    want = half_pixel_bilinear(x.astype("float64"), (32, 32))
    # Rounding to the nearest level (float32 arithmetic: off by one at .5).
    assert np.abs(got - np.round(want)).max() <= 1
    assert np.mean(got == np.round(want)) > 0.99
    assert data.resize_images(got, (32, 32)) is got
