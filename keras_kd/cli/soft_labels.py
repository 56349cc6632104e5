"""ReffAKD's soft-label table for the recipes, trained or read back.

The table depends on the student's training data, the seed and the
autoencoder's settings, not on ReffAKD's T or α: with
`--reffakd_soft_labels=<folder>` a (T, α) sweep trains the autoencoder
once per seed. Each table is a file named by a hash of those settings,
which it keeps beside the table, so a run reads only a table made with its
own.

Example (what `recipes/reffakd.py --reffakd_soft_labels=tables` does):

```python
table, cost = soft_label_table(data, x, y, cfg, seed)
```
"""

import hashlib
import json
import os

import numpy as np

from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import seed_all


def soft_label_table(data, x, y, cfg, seed):
    """The `(table, cost)` of ReffAKD: read from `--reffakd_soft_labels`
    when it holds a table made with this run's settings, else trained (and
    then written there when the flag is set)."""
    settings = _autoencoder_settings(cfg)
    if not FLAGS.reffakd_soft_labels:
        return _train_table(data, x, y, cfg, seed, settings)
    key = json.dumps(_table_identity(x, y, seed, settings), sort_keys=True)
    name = f"table_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    path = os.path.join(FLAGS.reffakd_soft_labels, name)
    if os.path.exists(path):
        with np.load(path) as stored:
            cost = json.loads(str(stored["cost"]))
            return stored["table"], dict(cost, reused_from=path)
    table, cost = _train_table(data, x, y, cfg, seed, settings)
    os.makedirs(FLAGS.reffakd_soft_labels, exist_ok=True)
    partial = f"{path}.partial.npz"  # Whole or absent, never half written.
    np.savez(partial, table=table, settings=key, cost=json.dumps(cost, default=float))
    os.replace(partial, path)
    return table, cost


def _autoencoder_settings(cfg):
    """The protocol and the autoencoder's flags (epochs: the paper's 200
    unless `--reffakd_ae_epochs`, 30 on digits)."""
    return {
        "protocol": cfg["protocol"],
        "epochs": FLAGS.reffakd_ae_epochs
        or (30 if cfg["protocol"] == "digits" else 200),
        "per_class": int(FLAGS.reffakd_per_class),
        "diagonal": float(FLAGS.reffakd_diagonal),
    }


def _table_identity(x, y, seed, settings):
    """What a kept table must match: the data, the seed and `settings`
    (the data's hash only here, where a table is kept)."""
    from keras_kd.offline import manifest

    return dict(settings, data=manifest.data_fingerprint(x, y), seed=int(seed))


def _train_table(data, x, y, cfg, seed, settings):
    """Trains the autoencoder and returns `(table, cost)`."""
    from keras_kd import reffakd

    seed_all(seed + 200)
    counts = np.bincount(y, minlength=data.info["num_classes"])
    per_class = min(settings["per_class"], int(counts.min()))
    if per_class < 2:
        raise RecipeError(
            f"ReffAKD samples images of every class, but the student's "
            f"training data has {int(counts.min())} image(s) of some class; "
            f"raise --train_limit."
        )
    if per_class < settings["per_class"]:
        print(
            f"[reffakd] sampling {per_class} images per class (the "
            f"smallest class has {int(counts.min())})."
        )
    # As the official notebooks: sizes that are not multiples of 8 are
    # resized (Fashion-MNIST's 28 -> 32, here or by the protocol's
    # image_size) and then neither padded nor cropped; CIFAR-size images
    # get the 4-pixel crop. The notebooks encode augmented images for the
    # similarities; the digits protocol (8x8, no notebook) encodes them as
    # they are, where a 4-pixel crop and a rotation leave little of an 8x8
    # digit.
    unit = reffakd.autoencoder_size(x.astype("float32") / 255.0)
    resized = unit.shape[1:3] != x.shape[1:3] or cfg["image_size"]
    crop_padding = 0 if resized else 4
    augment = None
    if cfg["protocol"] != "digits":
        augment = reffakd.augmentation(crop_padding, seed=seed)
    val = max(1, len(unit) // 10)
    autoencoder, cost = reffakd.train_autoencoder(
        unit[val:],
        unit[:val],
        epochs=settings["epochs"],
        batch_size=min(128, len(unit) - val),
        crop_padding=crop_padding,
    )
    similarity = reffakd.class_similarity(
        autoencoder.encoder,
        unit,
        y,
        per_class=per_class,
        diagonal_boost=settings["diagonal"],
        seed=seed,
        augment=augment,
    )
    cost.update(
        {
            "epochs": settings["epochs"],
            "per_class": per_class,
            "crop_padding": crop_padding,
            "similarity_of_augmented_images": augment is not None,
        }
    )
    return reffakd.soft_label_table(similarity), cost
