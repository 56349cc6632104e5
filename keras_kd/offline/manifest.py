"""A record's manifest: what was recorded, from what, and checksums.

`manifest.json` sits beside the shards. It names the teachers' weights
(sha256 of every weight array), the dataset (sha256 of `x` and `y`, size),
the augmentation spec, the seed, the epochs, the storage format and the
keras_kd version, and lists each finished shard with its sha256.
"""

import hashlib
import json
import os

import numpy as np

FILENAME = "manifest.json"
#: Fields that must match for a record to be reused, with their meaning.
IDENTITY = {
    "teachers": "teacher weights",
    "dataset": "data",
    "augmentation": "augmentation",
    "seed": "seed",
    "epochs": "epochs",
    "storage": "storage format",
    # Token records (kd.offline.record_tokens).
    "tokenizer": "tokenizer",
    "corpus": "corpus",
}


def weights_fingerprint(model):
    """sha256 over a model's weight arrays, in order (shapes included)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        digest.update(f"{weight.path}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def data_fingerprint(x, y):
    digest = hashlib.sha256()
    for array in (x, y):
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return {
        "sha256": digest.hexdigest(),
        "size": int(len(x)),
        "shape": [int(d) for d in np.shape(x)[1:]],
    }


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(path):
    """The manifest of the record at `path`, or None when there is none."""
    file = os.path.join(path, FILENAME)
    if not os.path.exists(file):
        return None
    with open(file) as f:
        return json.load(f)


def write(path, manifest):
    """Writes atomically, so a kill leaves the previous manifest intact."""
    file = os.path.join(path, FILENAME)
    with open(file + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(file + ".tmp", file)


def mismatches(stored, wanted):
    """The names (see `IDENTITY`) of the fields where two manifests differ."""
    return [
        label
        for key, label in IDENTITY.items()
        if _canonical(stored.get(key)) != _canonical(wanted.get(key))
    ]


def _canonical(value):
    return json.loads(json.dumps(value, sort_keys=True))
