"""Parameterised crop + flip: the spec a record stores and replays.

`CropFlip.sample` draws each example's augmentation from `(seed, epoch)`
alone, so a recording and a replay (or a live run on the same stream) agree
on every image; `CropFlip.apply` takes those parameters and returns the
images. Both use `kd.data`'s NumPy crop + flip.
"""

import numpy as np

from keras_kd.data.augment import apply_crop_flip
from keras_kd.data.augment import crop_flip_params


class CropFlip:
    """Random crop with zero padding and horizontal flip, then scaling.

    `normalize=(mean, std)` on the 0..255 scale (see
    `kd.data.channel_stats`), or None for `x / 255`. The spec is part of a
    record's manifest, so it must describe everything between the stored
    example and the model input.

    Example:

    ```python
    spec = kd.offline.CropFlip(padding=4, normalize=kd.data.channel_stats(x))
    params = spec.sample(seed=0, epoch=0, num_examples=len(x))
    images = spec.apply(x[:64], {k: v[:64] for k, v in params.items()})
    ```
    """

    def __init__(self, padding=4, flip=True, normalize=None):
        if int(padding) != padding or padding < 0:
            raise ValueError(
                f"padding must be a non-negative integer, got {padding!r}."
            )
        self.padding = int(padding)
        self.flip = bool(flip)
        self.normalize = (
            None
            if normalize is None
            else tuple(
                [float(v) for v in np.ravel(np.asarray(part, "float32"))]
                for part in normalize
            )
        )

    def sample(self, seed, epoch, num_examples):
        """`{"offsets": int8 (n, 2), "flip": bool (n,)}` for one epoch."""
        # Not `(seed, epoch, 0)`: NumPy seeds it as `(seed, epoch)`, the
        # stream of the epoch's order (`kd.data.epoch_order`).
        offsets, flip = crop_flip_params(
            [int(seed), int(epoch), 1], num_examples, self.padding
        )
        if not self.flip:
            flip[:] = False
        return {"offsets": offsets.astype("int8"), "flip": flip}

    def apply(self, images, params):
        """The float32 model inputs of uint8 (or float) NHWC `images`."""
        out = apply_crop_flip(
            images, params["offsets"], params["flip"], self.padding
        ).astype("float32")
        if self.normalize is None:
            return out / 255.0
        mean, std = (np.asarray(v, "float32") for v in self.normalize)
        return (out - mean) / std

    def get_config(self):
        return {
            "type": "crop_flip",
            "padding": self.padding,
            "flip": self.flip,
            "normalize": None
            if self.normalize is None
            else [list(v) for v in self.normalize],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.pop("type", "crop_flip") != "crop_flip":
            raise ValueError(f"Not a CropFlip spec: {config}.")
        return cls(**config)
