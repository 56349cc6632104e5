"""Shard files of a record: writing one, reading them all back (checked)."""

import os

import numpy as np

from keras_kd.offline import manifest as manifest_lib

#: The per-example target arrays of each storage format.
TARGET_KEYS = {
    "logits_float16": ("teacher_logits",),
    "top_k": ("teacher_topk_probs", "teacher_topk_indices"),
    # Per real token (kd.offline.record_tokens), not per example.
    "token_top_k": (
        "teacher_topk_log_probs",
        "teacher_topk_indices",
        "teacher_tail_log_mass",
    ),
}


def shard_name(epoch, start):
    return f"e{epoch:04d}_{start:09d}.npz"


def write_shard(path, name, arrays):
    """Writes a shard atomically and returns its sha256."""
    file = os.path.join(path, name)
    with open(file + ".tmp", "wb") as f:
        np.savez(f, **arrays)
    os.replace(file + ".tmp", file)
    return manifest_lib.file_sha256(file)


class Record:
    """A finished record in memory: its manifest and per-epoch arrays.

    `arrays[epoch][key]` holds one row per example, in example order, for
    `key` in `"offsets"`, `"flip"` and the storage format's target keys.
    Every shard's sha256 is checked against the manifest on loading.

    Example:

    ```python
    record = kd.offline.Record.load("runs/record")
    record.arrays[0]["teacher_logits"].shape  # (num_examples, classes)
    ```
    """

    def __init__(self, path, manifest, arrays):
        self.path = path
        self.manifest = manifest
        self.arrays = arrays

    @property
    def epochs(self):
        return self.manifest["epochs"]

    @property
    def target_keys(self):
        return TARGET_KEYS[self.manifest["storage"]["format"]]

    @classmethod
    def load(cls, path):
        manifest = manifest_lib.read(path)
        if manifest is None:
            raise FileNotFoundError(
                f"No record at '{path}' (no {manifest_lib.FILENAME}); make "
                f"one with kd.offline.record(...)."
            )
        if not manifest.get("complete"):
            raise ValueError(
                f"The record at '{path}' is incomplete ({len(manifest['shards'])}"
                f" of {manifest['num_shards']} shards); run kd.offline.record "
                f"with the same arguments to resume it."
            )
        arrays = []
        for epoch in range(manifest["epochs"]):
            parts = []
            for name in sorted(manifest["shards"]):
                if not name.startswith(f"e{epoch:04d}_"):
                    continue
                parts.append(_read_checked(path, name, manifest["shards"][name]))
            arrays.append(
                {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
            )
        return cls(path, manifest, arrays)


def _read_checked(path, name, sha256):
    file = os.path.join(path, name)
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"Shard '{name}' of the record at '{path}' is missing; re-record "
            f"with kd.offline.ensure_record(..., overwrite=True)."
        )
    actual = manifest_lib.file_sha256(file)
    if actual != sha256:
        raise ValueError(
            f"Shard '{name}' of the record at '{path}' is corrupted: its "
            f"sha256 is {actual[:12]}..., the manifest says {sha256[:12]}.... "
            f"Not training on it; re-record with kd.offline.record(...) (the "
            f"corrupted shard is recomputed) or ensure_record(..., "
            f"overwrite=True)."
        )
    with np.load(file) as data:
        return {key: data[key] for key in data.files}
