"""Token records: a language model teacher's top-k tokens, recorded once.

`record_tokens` runs the teacher once over a token corpus `(x, y,
sample_weight)` and stores, for every real token (`sample_weight != 0`;
padding is neither stored nor counted), the teacher's `top_k` largest
log-probabilities `log softmax(z / T)` (float16 by default), their
vocabulary indices (uint16 below 65,536 tokens, else int32) and the log of
the tail mass `log(1 − Σ_K p)`, in sha256-checked shards of sequences with
a manifest naming the teacher's weights, the tokenizer and the corpus.
Replay (`kd.offline.token_dataset`, `kd.offline.TokenReplayPyDataset`)
feeds `Distiller.fit` the corpus with the record's arrays as side inputs,
read by a `kd.offline.RecordedTeacher` and `kd.losses.SparseKLDistillation`;
a record made with another teacher, tokenizer or corpus is refused.
`kd.offline.sparse_kl_report` gives the bytes per token and the sparse
KL's error against the dense KL. docs/methods.md §10 ("Token records").

Example:

```python
fp = kd.offline.tokenizer_fingerprint(tokenizer)
kd.offline.record_tokens(teacher, (x, y, mask), "rec", top_k=64,
                         tokenizer_fingerprint=fp)
distiller = kd.Distiller(kd.offline.RecordedTeacher("rec"), student,
                         kd.losses.SparseKLDistillation(temperature=1.0))
distiller.compile(keras.optimizers.Adam(1e-4), loss=loss)
data = kd.offline.TokenReplayPyDataset(x, y, mask, 8, "rec", fp)
distiller.fit(data, epochs=1)
```
"""

import hashlib
import json
import math
import shutil

import keras
import numpy as np

from keras_kd.offline import manifest as manifest_lib
from keras_kd.offline import store
from keras_kd.offline.record import PROBABILITY_FLOOR
from keras_kd.offline.record import _logits
from keras_kd.offline.record import _resume_manifest

#: The value dtypes a token record stores.
VALUE_DTYPES = ("float16", "float32")
_LOG_FLOOR = math.log(PROBABILITY_FLOOR)


def record_tokens(
    teacher,
    data,
    path,
    top_k,
    tokenizer_fingerprint,
    corpus_fingerprint=None,
    temperature=1.0,
    dtype="float16",
    shard_size=1024,
    batch_size=8,
    overwrite=False,
    verbose=1,
):
    """Records a teacher's top-k log-probabilities per real token.

    Args:
        teacher: a `keras.Model` giving `(batch, length, vocabulary)`
            logits (or a softmax head's probabilities, read as their logs).
        data: `(x, y, sample_weight)` NumPy arrays: `x` token ids
            `(n, length)` or a dict of such arrays (e.g. keras_hub's
            `{"token_ids", "padding_mask"}`), `y` the next tokens and
            `sample_weight` `(n, length)`, whose zeros mark padding.
        path: the record's folder (created).
        top_k: tokens kept per position, `1 ≤ top_k ≤ vocabulary`.
        tokenizer_fingerprint: a string naming the tokenizer (e.g.
            `kd.offline.tokenizer_fingerprint(tokenizer)`).
        corpus_fingerprint: optional string naming the corpus (dataset,
            split, revision); the arrays' sha256 is stored in any case.
        temperature: the log-probabilities are of `softmax(z / T)`.
        dtype: `"float16"` (2 bytes per value) or `"float32"`.
        shard_size: sequences per shard file.
        batch_size: sequences per teacher call.
        overwrite: delete a record at `path` made otherwise and record
            anew (by default it is refused, naming what differs).

    Returns the manifest (a dict). A complete matching record is returned
    without running the teacher; an unfinished one is resumed.

    Example:

    ```python
    kd.offline.record_tokens(teacher, (x, y, mask), "rec", top_k=64,
                             tokenizer_fingerprint="gpt2-bpe-50257")
    ```
    """
    wanted = describe(
        teacher,
        data,
        top_k,
        tokenizer_fingerprint,
        corpus_fingerprint,
        temperature,
        dtype,
        shard_size,
    )
    stored = manifest_lib.read(path)
    if stored is not None and manifest_lib.mismatches(stored, wanted):
        if not overwrite:
            refuse(path, _differences(stored, wanted))
        shutil.rmtree(path)
    manifest = _resume_manifest(path, wanted)
    if manifest["complete"]:
        return manifest
    manifest_lib.write(path, manifest)
    x, _, weights = data
    n = len(weights)
    progbar = keras.utils.Progbar(n, verbose=verbose, unit_name="sequence")
    tail_mass = manifest.get("tail_mass", {"max": 0.0, "sum": 0.0})
    for start in range(0, n, int(shard_size)):
        stop = min(start + int(shard_size), n)
        name = store.shard_name(0, start)
        if name not in manifest["shards"]:
            arrays = _record_shard(teacher, x, weights, start, stop, wanted, batch_size)
            tail = np.exp(arrays["teacher_tail_log_mass"].astype("float64"))
            tail_mass["max"] = max(tail_mass["max"], float(tail.max(initial=0.0)))
            tail_mass["sum"] += float(tail.sum())
            manifest["shards"][name] = store.write_shard(path, name, arrays)
            manifest["tail_mass"] = tail_mass
            manifest_lib.write(path, manifest)
        progbar.add(stop - start)
    manifest["complete"] = True
    manifest_lib.write(path, manifest)
    return manifest


def describe(
    teacher,
    data,
    top_k,
    tokenizer_fingerprint,
    corpus_fingerprint,
    temperature,
    dtype,
    shard_size,
):
    """The identity part of a token record's manifest."""
    from keras_kd import __version__

    if not isinstance(teacher, keras.Model):
        raise ValueError(
            f"record_tokens() runs a trained teacher model; got "
            f"{type(teacher).__name__}."
        )
    x, y, weights = check_data(data)
    vocabulary = _vocabulary_size(teacher, x)
    if isinstance(top_k, bool) or not 1 <= int(top_k) <= vocabulary:
        raise ValueError(
            f"top_k must be an integer in [1, {vocabulary}] (the teacher's "
            f"vocabulary), got {top_k!r}."
        )
    if not isinstance(tokenizer_fingerprint, str) or not tokenizer_fingerprint:
        raise ValueError(
            "tokenizer_fingerprint must be a non-empty string naming the "
            "tokenizer, e.g. kd.offline.tokenizer_fingerprint(tokenizer)."
        )
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype must be one of {VALUE_DTYPES}, got {dtype!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    return {
        "keras_kd_version": __version__,
        "teachers": [
            {
                "name": teacher.name,
                "sha256": manifest_lib.weights_fingerprint(teacher),
                "weight": 1.0,
            }
        ],
        "tokenizer": tokenizer_fingerprint,
        "corpus": corpus_identity(x, y, weights, corpus_fingerprint),
        "epochs": 1,
        "num_classes": int(vocabulary),
        "num_shards": -(-len(weights) // int(shard_size)),
        "storage": {
            "format": "token_top_k",
            "top_k": int(top_k),
            "temperature": float(temperature),
            "values": dtype,
            "indices": "uint16" if vocabulary <= 1 << 16 else "int32",
            "shard_size": int(shard_size),
        },
    }


def corpus_identity(x, y, sample_weight, name=None):
    """The manifest's `corpus`: sha256 over the arrays (dict keys sorted),
    sequences, length, real tokens, and the caller's `name`."""
    digest = hashlib.sha256()
    for array in keras.tree.flatten((x, y, sample_weight)):
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    weights = np.asarray(sample_weight)
    return {
        "sha256": digest.hexdigest(),
        "sequences": int(weights.shape[0]),
        "length": int(weights.shape[1]),
        "tokens": int(np.count_nonzero(weights)),
        "name": name,
    }


def tokenizer_fingerprint(tokenizer):
    """sha256 of a tokenizer's vocabulary (and BPE merges).

    Takes a tokenizer with `get_vocabulary()` (keras_hub, keras'
    `TextVectorization`) or the vocabulary itself (a list, a dict or a
    string such as the bytes of a `tokenizer.json`).

    Example:

    ```python
    fp = kd.offline.tokenizer_fingerprint(keras_hub_model.preprocessor.tokenizer)
    ```
    """
    if hasattr(tokenizer, "get_vocabulary"):
        value = {
            "vocabulary": list(tokenizer.get_vocabulary()),
            "merges": list(getattr(tokenizer, "merges", None) or []),
        }
    elif isinstance(tokenizer, (list, tuple, dict, str)):
        value = tokenizer
    else:
        raise ValueError(
            f"tokenizer_fingerprint takes a tokenizer with get_vocabulary() "
            f"or a vocabulary (list, dict or str), got {type(tokenizer).__name__}."
        )
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def refuse(path, differences):
    """Raises a ValueError naming each `(field, recorded, asked)` and the fix."""
    listed = "; ".join(
        f"{field}: recorded {recorded}, asked {asked}"
        for field, recorded, asked in differences
    )
    raise ValueError(
        f"The token record at '{path}' was made with another "
        f"{', '.join(field for field, _, _ in differences)} ({listed}). "
        f"Pass the teacher, tokenizer and corpus it was recorded with, "
        f"choose another path, or re-record with "
        f"kd.offline.record_tokens(..., overwrite=True)."
    )


def summary(field, value):
    """A short, readable form of a manifest field for error messages."""
    if value is None:
        return "nothing"
    if field == "teacher weights":
        return "sha256 " + ",".join(t["sha256"][:12] for t in value) + "..."
    if field == "corpus":
        name = f" '{value['name']}'" if value.get("name") else ""
        return (
            f"sha256 {value['sha256'][:12]}...{name} ({value['sequences']} "
            f"sequences, {value['tokens']} tokens)"
        )
    if field == "tokenizer":
        return f"'{value[:16]}{'...' if len(value) > 16 else ''}'"
    return json.dumps(value, sort_keys=True)


def _differences(stored, wanted):
    keys = {label: key for key, label in manifest_lib.IDENTITY.items()}
    return [
        (label, summary(label, stored.get(keys[label])), summary(label, wanted[key]))
        for label in manifest_lib.mismatches(stored, wanted)
        for key in [keys[label]]
    ]


def check_data(data):
    """`(x, y, sample_weight)` checked: sequences of one length, the
    weights a NumPy array."""
    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise ValueError(
            "data must be (x, y, sample_weight): token ids (or a dict of "
            "them), the next tokens, and the (n, length) padding weights."
        )
    x, y, weights = data
    weights = np.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(
            f"sample_weight must have shape (sequences, length), got {weights.shape}."
        )
    for array in keras.tree.flatten((x, y)):
        if tuple(np.shape(array)[:2]) != weights.shape:
            raise ValueError(
                f"x and y arrays must be (sequences, length) = "
                f"{weights.shape} like sample_weight, got {np.shape(array)}."
            )
    return x, y, weights


def _vocabulary_size(teacher, x):
    outputs = getattr(teacher, "outputs", None)
    if outputs and outputs[0].shape[-1] is not None:
        return int(outputs[0].shape[-1])
    first = keras.tree.map_structure(lambda a: np.asarray(a)[:1], x)
    return int(_logits(teacher, first).shape[-1])


def _record_shard(teacher, x, weights, start, stop, wanted, batch_size):
    """The arrays of the shard of sequences `start:stop`."""
    storage = wanted["storage"]
    parts = []
    for low in range(start, stop, int(batch_size)):
        high = min(low + int(batch_size), stop)
        batch = keras.tree.map_structure(lambda a: np.asarray(a)[low:high], x)
        logits = _logits(teacher, batch)
        parts.append(encode(logits[np.asarray(weights[low:high]) != 0], storage))
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    counts = np.count_nonzero(np.asarray(weights[start:stop]), axis=1)
    arrays["num_tokens"] = counts.astype("int32")
    return arrays


def encode(logits, storage):
    """Top-k log-probabilities, indices and tail log-mass of `(n, V)`
    logits, in the storage's dtypes, sorted by decreasing probability."""
    k, dtype = storage["top_k"], storage["values"]
    z = np.asarray(logits, "float32") / storage["temperature"]
    m = z.max(axis=-1, keepdims=True)
    log_p = z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))
    if k < log_p.shape[-1]:
        kept = np.argpartition(-log_p, k - 1, axis=-1)[:, :k]
    else:
        kept = np.broadcast_to(np.arange(k), log_p.shape).copy()
    values = np.take_along_axis(log_p, kept, axis=-1)
    order = np.lexsort((kept, -values), axis=-1)
    indices = np.take_along_axis(kept, order, axis=-1)
    values = np.take_along_axis(values, order, axis=-1)
    # The tail: logsumexp of the log-probabilities left out (-inf if none).
    np.put_along_axis(log_p, indices, -np.inf, axis=-1)
    top = log_p.max(axis=-1, initial=-np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = np.log(np.exp(log_p - top[:, None]).sum(axis=-1)) + top
    tail = np.where(np.isfinite(top), rest, -np.inf)
    return {
        "teacher_topk_log_probs": np.maximum(values, _LOG_FLOOR).astype(dtype),
        "teacher_topk_indices": indices.astype(storage["indices"]),
        "teacher_tail_log_mass": tail.astype(dtype),
    }
