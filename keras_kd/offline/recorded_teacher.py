"""A teacher stand-in that replays recorded targets."""

import keras
from keras import ops

from keras_kd.offline import manifest as manifest_lib
from keras_kd.offline.store import TARGET_KEYS


@keras.saving.register_keras_serializable(package="keras_kd")
class RecordedTeacher(keras.layers.Layer):
    """Takes a teacher's place in `kd.Distiller` with recorded targets.

    It runs no network: the batch carries the recorded targets beside the
    images (`x = {"inputs": images, "teacher_logits": ...}`, as yielded by
    `kd.offline.dataset` or `kd.offline.ReplayPyDataset`), and the
    Distiller hands them to this layer, which returns `{"logits": ...}`
    (float16 logits storage) or `{"probabilities": ...}` (top-k storage,
    the missing mass spread evenly over the other classes). Logit terms
    (`LogitsDistillation`, `SubsetLogitsDistillation` on logits) work from
    it; terms that read teacher features or expand views need a live
    teacher and are refused before training. A token record
    (`kd.offline.record_tokens`, batches from `kd.offline.token_dataset`)
    gives `{"topk_logits", "topk_indices", "tail_log_mass"}` per token,
    read by `kd.losses.SparseKLDistillation` only.

    Args:
        path: the record's folder.
        teacher_index: for a record made with `per_teacher=True`, which
            teacher this stands in for (see `recorded_teachers`).

    Example:

    ```python
    teacher = kd.offline.RecordedTeacher("rec")
    distiller = kd.Distiller(teacher, student,
                             kd.losses.LogitsDistillation(temperature=4.0))
    distiller.fit(kd.offline.dataset("rec", x, y, batch_size=64), epochs=2)
    ```
    """

    def __init__(self, path, teacher_index=None, **kwargs):
        super().__init__(trainable=False, dtype="float32", **kwargs)
        manifest = manifest_lib.read(path)
        if manifest is None:
            raise FileNotFoundError(
                f"No record at '{path}'; make one with kd.offline.record(...)."
            )
        storage = manifest["storage"]
        per_teacher = storage.get("ensemble") == "per_teacher"
        if per_teacher and teacher_index is None:
            raise ValueError(
                f"The record at '{path}' stores each teacher's targets; give "
                f"teacher_index, or use kd.offline.recorded_teachers(path)."
            )
        if not per_teacher and teacher_index is not None:
            raise ValueError(
                f"The record at '{path}' stores the ensemble mean; do not "
                f"give teacher_index."
            )
        if per_teacher and not 0 <= teacher_index < len(manifest["teachers"]):
            raise ValueError(
                f"teacher_index {teacher_index} is out of range: the record "
                f"holds {len(manifest['teachers'])} teachers."
            )
        self.record_path = path
        self.teacher_index = teacher_index
        self.manifest = manifest
        self.num_classes = manifest["num_classes"]
        self.storage = storage
        self.side_inputs = TARGET_KEYS[storage["format"]]

    def output_shapes(self):
        if self.storage["format"] == "token_top_k":
            k = self.storage["top_k"]
            return {
                "topk_logits": (None, None, k),
                "topk_indices": (None, None, k),
                "tail_log_mass": (None, None),
            }
        key = (
            "logits"
            if self.storage["format"] == "logits_float16"
            else ("probabilities")
        )
        return {key: (None, self.num_classes)}

    def check_terms(self, terms, augmentation=None):
        """Raises before training for terms a record cannot feed."""
        live = live_teacher_terms(terms)
        if live:
            raise ValueError(
                f"The terms {live} read teacher features or views (rotation "
                f"views are not recorded), which a RecordedTeacher does not "
                f"have; they need a live teacher. Only logit terms (e.g. "
                f"kd.losses.LogitsDistillation) work from a record."
            )
        if augmentation is not None:
            raise ValueError(
                "A RecordedTeacher replays the recorded augmentation, which "
                "kd.offline.dataset already applies; pass augmentation=None "
                "to the Distiller."
            )
        if self.storage["format"] == "token_top_k":
            return self._check_token_terms(terms)
        if self.storage["format"] != "top_k":
            return
        for term in terms:
            t = getattr(term, "temperature", None)
            if getattr(term, "class_indices", None) is not None:
                raise ValueError(
                    f"{term.name} restricts the teacher's logits to classes, "
                    f"but the record at '{self.record_path}' stores top-k "
                    f"probabilities; record full logits (top_k=None)."
                )
            if t is not None and t != self.storage["temperature"]:
                raise ValueError(
                    f"{term.name} uses temperature {t}, but the record at "
                    f"'{self.record_path}' holds top-k probabilities at temperature "
                    f"{self.storage['temperature']}; record at {t} or set "
                    f"the term's temperature to {self.storage['temperature']}."
                )

    def _check_token_terms(self, terms):
        temperature = self.storage["temperature"]
        for term in terms:
            if term.uses_logits and not getattr(term, "reads_top_k", False):
                raise ValueError(
                    f"{term.name} reads the teacher's full logits, but the "
                    f"record at '{self.record_path}' stores its top-"
                    f"{self.storage['top_k']} log-probabilities per token; "
                    f"use kd.losses.SparseKLDistillation."
                )
            handling = getattr(term, "missing_probability_handling", None)
            if handling == "symmetric_uniform" and term.temperature != temperature:
                raise ValueError(
                    f"{term.name} keeps the tail mass as one bucket "
                    f"(missing_probability_handling='symmetric_uniform') at "
                    f"temperature {term.temperature}, but the record at "
                    f"'{self.record_path}' holds the tail at temperature "
                    f"{temperature}; set the term's temperature to "
                    f"{temperature}, record at {term.temperature}, or use "
                    f"missing_probability_handling='zero' (exact at any "
                    f"temperature)."
                )

    def call(self, side_inputs):
        index = self.teacher_index
        if self.storage["format"] == "token_top_k":
            # T · log p: the teacher's top-k logits up to a per-token shift.
            log_p = ops.cast(side_inputs["teacher_topk_log_probs"], "float32")
            return {
                "topk_logits": self.storage["temperature"] * log_p,
                "topk_indices": ops.cast(side_inputs["teacher_topk_indices"], "int32"),
                "tail_log_mass": ops.cast(
                    side_inputs["teacher_tail_log_mass"], "float32"
                ),
            }
        if self.storage["format"] == "logits_float16":
            logits = ops.cast(side_inputs["teacher_logits"], "float32")
            return {"logits": logits if index is None else logits[:, index]}
        probs = ops.cast(side_inputs["teacher_topk_probs"], "float32")
        indices = ops.cast(side_inputs["teacher_topk_indices"], "int32")
        if index is not None:
            probs, indices = probs[:, index], indices[:, index]
        return {"probabilities": dense_probabilities(probs, indices, self.num_classes)}

    def get_config(self):
        config = super().get_config()
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return {**config, "path": self.record_path, "teacher_index": self.teacher_index}


def live_teacher_terms(terms):
    """The names of the terms a record cannot feed: those reading teacher
    features (any teacher output but `"logits"`) or expanding views.

    Example:

    ```python
    kd.offline.live_teacher_terms([kd.losses.FeatureDistillation(...)])
    ```
    """
    return [
        term.name
        for term in terms
        if [n for n in term.teacher_layer_names if n != "logits"] or term.num_views > 1
    ]


def dense_probabilities(top_probs, top_indices, num_classes):
    """Top-k probabilities made dense, the rest of the mass spread evenly."""
    k = top_probs.shape[-1]
    fill = ops.maximum(1.0 - ops.sum(top_probs, axis=-1, keepdims=True), 0.0)
    fill = fill / (num_classes - k)
    one_hot = ops.one_hot(top_indices, num_classes, dtype="float32")
    return fill + ops.einsum("bk,bkc->bc", top_probs - fill, one_hot)


def recorded_teachers(path):
    """One `RecordedTeacher` per teacher of a `per_teacher=True` record.

    Example:

    ```python
    teachers = kd.offline.recorded_teachers("rec")
    distiller = kd.Distiller(teachers, student, kd.losses.LogitsDistillation(),
                             teacher_weights=[0.7, 0.3])
    ```
    """
    manifest = manifest_lib.read(path)
    if manifest is None:
        raise FileNotFoundError(f"No record at '{path}'.")
    return [
        RecordedTeacher(path, teacher_index=i, name=f"recorded_{t['name']}")
        for i, t in enumerate(manifest["teachers"])
    ]
