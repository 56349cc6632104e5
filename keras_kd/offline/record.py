"""Recording teachers' targets over an augmented stream, once.

`record` runs the teacher(s) over `epochs` epochs of the augmented data
and writes, per (epoch, example), the augmentation parameters and the
teachers' targets to sharded `.npz` files plus a manifest. It resumes
after a kill: shards already listed in the manifest (with a matching
sha256) are kept.
"""

import os
import shutil

import keras
import numpy as np

from keras_kd.offline import manifest as manifest_lib
from keras_kd.offline import store
from keras_kd.offline.augment import CropFlip

# As keras_kd.model_outputs: the smallest normal float32, the floor of a
# softmax teacher's probabilities before the log.
PROBABILITY_FLOOR = float(np.finfo("float32").tiny)


def record(
    teachers,
    data,
    augmentation,
    epochs,
    path,
    seed,
    top_k=None,
    temperature=4.0,
    teacher_weights=None,
    per_teacher=False,
    shard_size=4096,
    batch_size=256,
    verbose=1,
):
    """Records the teachers' targets on `epochs` epochs of augmented data.

    Args:
        teachers: a `keras.Model` or a list of them.
        data: `(x, y)` NumPy arrays, `x` NHWC images as stored (e.g. uint8).
        augmentation: a `kd.offline.CropFlip` spec.
        epochs: how many epochs of augmentation to record.
        path: the record's folder (created).
        seed: seeds the augmentation (and the replay's shuffling).
        top_k: None stores float16 logits; an integer stores the `top_k`
            largest probabilities of `softmax(z / temperature)` (float16)
            with their class indices, the rest of the mass spread evenly
            over the other classes on replay (see docs/methods.md §10
            for the error bound).
        temperature: the temperature of the top-k probabilities (the terms
            must use the same one); unused for logits.
        teacher_weights: ensemble weights (normalised; default equal). The
            ensemble is stored as the weighted mean of the logits (full
            storage) or of the tempered probabilities (top-k).
        per_teacher: store each teacher's targets instead of the mean.
        shard_size: examples per shard file.

    Returns the record's manifest (a dict). A record already at `path`
    with the same teachers, data, augmentation, seed, epochs and storage is
    resumed (or returned when complete); any other is refused.

    Example:

    ```python
    spec = kd.offline.CropFlip(padding=4, normalize=(mean, std))
    kd.offline.record(teacher, (x, y), spec, epochs=2, path="rec", seed=0)
    ```
    """
    teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    x, y = data
    wanted = describe(
        teachers,
        (x, y),
        augmentation,
        epochs,
        seed,
        top_k,
        temperature,
        teacher_weights,
        per_teacher,
        shard_size,
    )
    manifest = _resume_manifest(path, wanted)
    if manifest["complete"]:
        return manifest
    manifest_lib.write(path, manifest)
    weights = [t["weight"] for t in wanted["teachers"]]
    n = len(x)
    progbar = keras.utils.Progbar(epochs * n, verbose=verbose, unit_name="image")
    tail_mass = manifest.get("tail_mass", {"max": 0.0, "sum": 0.0})
    for epoch in range(epochs):
        params = augmentation.sample(seed, epoch, n)
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            name = store.shard_name(epoch, start)
            if name in manifest["shards"]:
                progbar.add(stop - start)
                continue
            arrays = {key: value[start:stop] for key, value in params.items()}
            logits = _augmented_logits(
                teachers, x, augmentation, params, start, stop, batch_size, progbar
            )
            arrays.update(
                _encode(logits, weights, top_k, temperature, per_teacher, tail_mass)
            )
            manifest["shards"][name] = store.write_shard(path, name, arrays)
            if top_k:
                manifest["tail_mass"] = tail_mass
            manifest_lib.write(path, manifest)
    manifest["complete"] = True
    manifest_lib.write(path, manifest)
    return manifest


def ensure_record(
    teachers, data, augmentation, epochs, path, seed, overwrite=False, **kwargs
):
    """Records when `path` holds no record, reuses one that matches.

    A record made from other teacher weights, data, augmentation, seed,
    epochs or storage is refused with a ValueError naming the mismatch,
    unless `overwrite=True`, which deletes it and records anew. Takes
    `record`'s arguments.

    Example:

    ```python
    kd.offline.ensure_record(teacher, (x, y), spec, 2, "rec", seed=0)
    ```
    """
    if overwrite and os.path.isdir(path):
        shutil.rmtree(path)
    return record(teachers, data, augmentation, epochs, path, seed, **kwargs)


def describe(
    teachers,
    data,
    augmentation,
    epochs,
    seed,
    top_k,
    temperature,
    teacher_weights,
    per_teacher,
    shard_size,
):
    """The identity part of a manifest for these arguments."""
    from keras_kd import __version__

    x, y = data
    for model in teachers:
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"record() runs trained teacher models; got {type(model).__name__}."
            )
    if not isinstance(augmentation, CropFlip):
        raise ValueError(
            f"augmentation must be a kd.offline.CropFlip spec, got "
            f"{type(augmentation).__name__}."
        )
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if len(x) != len(y):
        raise ValueError(f"data has {len(x)} images but {len(y)} labels.")
    classes = teachers[0].outputs[0].shape[-1]
    if top_k is not None and not 1 <= int(top_k) < classes:
        raise ValueError(
            f"top_k must be an integer in [1, {classes - 1}] (the teachers "
            f"have {classes} classes), or None for full logits; got {top_k!r}."
        )
    if top_k is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if teacher_weights is None:
        teacher_weights = [1.0] * len(teachers)
    if len(teacher_weights) != len(teachers) or min(teacher_weights) <= 0:
        raise ValueError(
            f"teacher_weights must hold one positive weight per teacher "
            f"({len(teachers)} teachers), got {list(teacher_weights)}."
        )
    total = float(sum(teacher_weights))
    return {
        "keras_kd_version": __version__,
        "teachers": [
            {
                "name": model.name,
                "sha256": manifest_lib.weights_fingerprint(model),
                "weight": float(w) / total,
                # Records of softmax teachers made before their
                # log-probabilities were stored lack this: refused.
                **(
                    {"targets": "log_probabilities"}
                    if _reads_log_probabilities(model)
                    else {}
                ),
            }
            for model, w in zip(teachers, teacher_weights)
        ],
        "dataset": manifest_lib.data_fingerprint(x, y),
        "augmentation": augmentation.get_config(),
        "seed": int(seed),
        "epochs": int(epochs),
        "num_classes": int(classes),
        "num_shards": int(epochs) * -(-len(x) // int(shard_size)),
        "storage": {
            "format": "logits_float16" if top_k is None else "top_k",
            "top_k": None if top_k is None else int(top_k),
            "temperature": None if top_k is None else float(temperature),
            "ensemble": "per_teacher" if per_teacher else "mean",
            "shard_size": int(shard_size),
        },
    }


def _refuse_mismatch(path, stored, wanted):
    different = manifest_lib.mismatches(stored, wanted)
    if different:
        raise ValueError(
            f"The record at '{path}' was made with other "
            f"{', '.join(different)} than asked; reuse it with the arguments "
            f"it was recorded with, choose another path, or pass "
            f"overwrite=True to kd.offline.ensure_record to re-record."
        )


def _resume_manifest(path, wanted):
    """A new manifest, or the one at `path` less the shards missing or
    changed since it was written; refuses a record of other arguments."""
    os.makedirs(path, exist_ok=True)
    manifest = manifest_lib.read(path)
    if manifest is None:
        return {**wanted, "shards": {}, "complete": False}
    _refuse_mismatch(path, manifest, wanted)
    if not manifest["complete"]:
        manifest["shards"] = {
            name: sha
            for name, sha in manifest["shards"].items()
            if os.path.exists(os.path.join(path, name))
            and manifest_lib.file_sha256(os.path.join(path, name)) == sha
        }
    return manifest


def _augmented_logits(
    teachers, x, augmentation, params, start, stop, batch_size, progbar
):
    """The teachers' logits, shaped (examples, teachers, classes), on
    examples `start:stop` of `x` augmented with `params`."""
    targets = []
    for low in range(start, stop, batch_size):
        high = min(low + batch_size, stop)
        images = augmentation.apply(
            x[low:high], {k: v[low:high] for k, v in params.items()}
        )
        targets.append(np.stack([_logits(model, images) for model in teachers], axis=1))
        progbar.add(high - low)
    return np.concatenate(targets)


def _logits(model, images):
    """A teacher's logits on `images`; of a softmax teacher, its
    log-probabilities (as the live Distiller reads it)."""
    out = model.predict_on_batch(images)
    out = np.asarray(out["logits"] if isinstance(out, dict) else out, "float32")
    if _reads_log_probabilities(model):
        out = np.log(np.maximum(out, PROBABILITY_FLOOR))
    return out


def _reads_log_probabilities(model):
    # Imported here: keras_kd.model_outputs imports keras_kd.offline.
    from keras_kd import model_outputs

    return model_outputs.softmax_layer(model) is not None


def _encode(logits, weights, top_k, temperature, per_teacher, tail_mass):
    """Target arrays from logits of shape (n, teachers, classes)."""
    weights = np.asarray(weights, "float32")[None, :, None]
    if top_k is None:
        values = logits if per_teacher else (weights * logits).sum(axis=1)
        return {"teacher_logits": values.astype("float16")}
    z = logits / temperature
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if not per_teacher:
        probs = (weights * probs).sum(axis=1)
    indices = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
    top = np.take_along_axis(probs, indices, axis=-1)
    tail = 1.0 - top.sum(axis=-1)
    tail_mass["max"] = max(tail_mass["max"], float(tail.max()))
    tail_mass["sum"] += float(tail.sum())
    return {
        "teacher_topk_probs": top.astype("float16"),
        "teacher_topk_indices": indices.astype(
            "int16" if probs.shape[-1] <= 1 << 15 else "int32"
        ),
    }
