"""Replaying a token record: the corpus with the teacher's top-k per token.

Batch `i` is step `i % steps` of epoch `initial_epoch + i // steps`:
the sequences in that epoch's order (`kd.data.epoch_order(n, epoch,
seed)`), as `({"inputs": x, <record arrays>}, y, sample_weight)` with the
record's arrays laid out `(batch, length, k)` and `(batch, length)` on the
real tokens (padding gets finite fillers, masked out by the weights).
`kd.offline.RecordedTeacher(path)` reads them in `kd.Distiller` in place of
the teacher's forward pass.

Example:

```python
data = kd.offline.TokenReplayPyDataset(x, y, mask, 8, "rec", fp, epochs=3)
distiller.fit(data, epochs=3, steps_per_epoch=data.steps)
```
"""

import os

import keras
import numpy as np

from keras_kd.data.common import epoch_order
from keras_kd.data.common import steps_per_epoch
from keras_kd.offline import manifest as manifest_lib
from keras_kd.offline import tokens
from keras_kd.offline.pipeline import tf_dataset
from keras_kd.offline.record import _logits
from keras_kd.offline.store import Record


class _TokenReplay:
    """Batch `i` of a token record's replayed stream, as NumPy arrays."""

    def __init__(
        self,
        x,
        y,
        sample_weight,
        batch_size,
        record,
        tokenizer_fingerprint,
        teacher=None,
        corpus_fingerprint=None,
        epochs=1,
        shuffle=True,
        seed=0,
        drop_remainder=False,
        initial_epoch=0,
    ):
        record = record if isinstance(record, Record) else Record.load(record)
        if record.manifest["storage"]["format"] != "token_top_k":
            raise ValueError(
                f"The record at '{record.path}' holds per-example targets "
                f"(kd.offline.record); replay it with kd.offline.dataset."
            )
        x, y, weights = tokens.check_data((x, y, sample_weight))
        check_record(
            record, (x, y, weights), tokenizer_fingerprint, teacher, corpus_fingerprint
        )
        self.record, self.x, self.y, self.weights = record, x, np.asarray(y), weights
        self.arrays = record.arrays[0]
        counts = self.arrays["num_tokens"].astype("int64")
        if not np.array_equal(counts, np.count_nonzero(weights, axis=1)):
            raise ValueError(
                f"The record at '{record.path}' holds other token counts per "
                f"sequence than sample_weight's nonzeros; re-record with "
                f"kd.offline.record_tokens(..., overwrite=True)."
            )
        self.offsets = np.cumsum(counts) - counts
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.steps = steps_per_epoch(len(weights), self.batch_size, drop_remainder)
        self.epochs, self.initial_epoch = int(epochs), int(initial_epoch)
        if not 0 <= self.initial_epoch < self.epochs:
            raise ValueError(
                f"initial_epoch must be in [0, {self.epochs}) (epochs="
                f"{self.epochs}), got {initial_epoch!r}."
            )
        self._order = {}

    def __len__(self):
        return (self.epochs - self.initial_epoch) * self.steps

    def batch(self, index):
        epoch, step = divmod(int(index), self.steps)
        epoch += self.initial_epoch
        if epoch not in self._order:
            self._order = {
                epoch: epoch_order(len(self.weights), epoch, self.seed, self.shuffle)
            }
        rows = self._order[epoch][step * self.batch_size : (step + 1) * self.batch_size]
        weights = self.weights[rows]
        real = weights != 0
        # Row r of the record for each real token: its sequence's offset
        # plus its rank among the sequence's real tokens.
        flat = (self.offsets[rows][:, None] + np.cumsum(real, axis=1) - 1)[real]
        inputs = {"inputs": keras.tree.map_structure(lambda a: a[rows], self.x)}
        for key, fill, dtype in (
            ("teacher_topk_log_probs", 0.0, None),
            ("teacher_topk_indices", 0, "int32"),
            ("teacher_tail_log_mass", -np.inf, None),
        ):
            stored = self.arrays[key]
            out = np.full(real.shape + stored.shape[1:], fill, dtype or stored.dtype)
            out[real] = stored[flat]
            inputs[key] = out
        return inputs, self.y[rows], weights


def check_record(record, data, tokenizer_fingerprint, teacher=None, corpus_name=None):
    """Refuses a token record made with another tokenizer or corpus (the
    arrays `data = (x, y, sample_weight)`), or, when given, another
    teacher (a model or its weights' sha256) or corpus name."""
    manifest = record.manifest
    wanted_corpus = tokens.corpus_identity(*data, manifest["corpus"]["name"])
    if corpus_name is not None:
        wanted_corpus["name"] = corpus_name
    differences = []
    if wanted_corpus != manifest["corpus"]:
        differences.append(("corpus", manifest["corpus"], wanted_corpus))
    if tokenizer_fingerprint is not None and (
        tokenizer_fingerprint != manifest["tokenizer"]
    ):
        differences.append(("tokenizer", manifest["tokenizer"], tokenizer_fingerprint))
    if teacher is not None:
        sha = teacher if isinstance(teacher, str) else None
        sha = sha or manifest_lib.weights_fingerprint(teacher)
        if sha != manifest["teachers"][0]["sha256"]:
            wanted = [{"sha256": sha}]
            differences.append(("teacher weights", manifest["teachers"], wanted))
    if differences:
        tokens.refuse(
            record.path,
            [
                (field, tokens.summary(field, a), tokens.summary(field, b))
                for field, a, b in differences
            ],
        )


def token_dataset(
    x,
    y,
    sample_weight,
    batch_size,
    record,
    tokenizer_fingerprint,
    teacher=None,
    corpus_fingerprint=None,
    epochs=1,
    shuffle=True,
    seed=0,
    drop_remainder=False,
    initial_epoch=0,
):
    """A `tf.data` stream of `({"inputs": x, <record arrays>}, y,
    sample_weight)` batches replaying a token record (every backend).

    Args:
        x, y, sample_weight: the corpus the record was made from.
        batch_size: sequences per batch.
        record: the record's path or a `kd.offline.Record`.
        tokenizer_fingerprint: the tokenizer's fingerprint; a record made
            with another is refused, as one of another corpus.
        teacher: optional teacher model or its weights' sha256, checked.
        corpus_fingerprint: optional corpus name, checked when given.
        epochs, initial_epoch: the stream spans these training epochs.
        shuffle, seed: each epoch's order, `kd.data.epoch_order`.

    Example:

    ```python
    ds = kd.offline.token_dataset(x, y, mask, 8, "rec", fp, epochs=2)
    distiller.fit(ds, epochs=2, steps_per_epoch=kd.offline.steps_per_epoch(len(x), 8))
    ```
    """
    return tf_dataset(
        _TokenReplay(
            x,
            y,
            sample_weight,
            batch_size,
            record,
            tokenizer_fingerprint,
            teacher,
            corpus_fingerprint,
            epochs,
            shuffle,
            seed,
            drop_remainder,
            initial_epoch,
        )
    )


class TokenReplayPyDataset(keras.utils.PyDataset):
    """The `token_dataset` stream as a NumPy `keras.utils.PyDataset`.

    Takes `token_dataset`'s arguments (and PyDataset's `workers`, ...).
    Item `i` is batch `i`; `steps` is the number of batches per epoch.

    Example:

    ```python
    data = kd.offline.TokenReplayPyDataset(x, y, mask, 8, "rec", fp)
    distiller.fit(data, epochs=1)
    ```
    """

    def __init__(
        self,
        x,
        y,
        sample_weight,
        batch_size,
        record,
        tokenizer_fingerprint,
        teacher=None,
        corpus_fingerprint=None,
        epochs=1,
        shuffle=True,
        seed=0,
        drop_remainder=False,
        initial_epoch=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._replay = _TokenReplay(
            x,
            y,
            sample_weight,
            batch_size,
            record,
            tokenizer_fingerprint,
            teacher,
            corpus_fingerprint,
            epochs,
            shuffle,
            seed,
            drop_remainder,
            initial_epoch,
        )
        self.steps = self._replay.steps

    def __len__(self):
        return len(self._replay)

    def __getitem__(self, index):
        return self._replay.batch(index)


def record_size(path):
    """Bytes per real token of a token record: on disk (shards, npz
    headers and per-sequence counts included) and the payload alone.

    Example:

    ```python
    kd.offline.record_size("rec")["bytes_per_token"]
    ```
    """
    manifest = manifest_lib.read(path)
    storage = manifest["storage"]
    num_tokens = manifest["corpus"]["tokens"]
    size = sum(os.path.getsize(os.path.join(path, name)) for name in manifest["shards"])
    value = np.dtype(storage["values"]).itemsize
    index = np.dtype(storage["indices"]).itemsize
    return {
        "tokens": num_tokens,
        "bytes": size,
        "bytes_per_token": size / max(num_tokens, 1),
        "payload_bytes_per_token": storage["top_k"] * (value + index) + value,
    }


def sparse_kl_report(record, teacher, student, data, temperature=1.0, num_sequences=8):
    """Bytes per token of a token record and the error of its sparse KL
    against the dense KL, on the first `num_sequences` sequences of `data`.

    The dense value is `T² KL(softmax(z_t/T) ‖ softmax(z_s/T))` per token
    from the live teacher; the sparse one is
    `kd.losses.SparseKLDistillation`'s from the record (storage rounding
    included), for each `missing_probability_handling` (`"symmetric_uniform"`
    only at the record's temperature). Errors are over real tokens:
    `mean_absolute_error = Σ w |s − d| / Σ w` and
    `relative_error = Σ w |s − d| / Σ w d`.

    Example:

    ```python
    report = kd.offline.sparse_kl_report("rec", teacher, student, (x, y, mask))
    ```
    """
    from keras import ops

    from keras_kd.losses.base import tempered_kl
    from keras_kd.losses.sparse_kl_distillation import sparse_kl
    from keras_kd.offline.recorded_teacher import RecordedTeacher

    replay = _TokenReplay(
        *data, num_sequences, record, None, teacher=teacher, shuffle=False
    )
    x_batch, _, weights = replay.batch(0)
    path = replay.record.path
    targets = RecordedTeacher(path)(
        {key: x_batch[key] for key in replay.record.target_keys}
    )
    z_t = _logits(teacher, x_batch["inputs"])
    z_s = _logits(student, x_batch["inputs"])
    w = np.asarray(weights, "float64")
    t = float(temperature)
    dense = ops.convert_to_numpy(
        tempered_kl(ops.softmax(z_t / t, axis=-1), {"logits": z_s}, t)
    )
    report = {**record_size(path), "dense_kl": _mean(dense, w)}
    for handling in ("zero", "symmetric_uniform"):
        if handling != "zero" and t != replay.record.manifest["storage"]["temperature"]:
            continue
        sparse = ops.convert_to_numpy(
            sparse_kl(
                z_s,
                *(targets[k] for k in ("topk_logits", "topk_indices", "tail_log_mass")),
                t,
                handling,
            )
        )
        error = np.abs(sparse - dense)
        report[handling] = {
            "sparse_kl": _mean(sparse, w),
            "mean_absolute_error": _mean(error, w),
            "relative_error": float((error * w).sum() / max((dense * w).sum(), 1e-30)),
        }
    return report


def _mean(value, weights):
    value = np.where(weights != 0, np.asarray(value, "float64"), 0.0)
    return float((value * weights).sum() / max(weights.sum(), 1e-30))
