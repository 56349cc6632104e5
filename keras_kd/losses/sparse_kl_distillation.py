"""Sparse KL: distillation from a teacher's recorded top-k tokens.

A token record (`kd.offline.record_tokens`) keeps, per real token, the
teacher's k most likely tokens `K` with their log-probabilities and the
log of the tail mass `r = 1 − Σ_K p`. The student's full softmax is
compared with them in one of two ways, named as DistillKit's
`missing_probability_handling` (`distillkit/missing_probability.py`,
`distillkit/lossfuncs/kl.py`), with the same per-token values:

- `"zero"` (DistillKit's default): the teacher's tokens outside `K` get
  probability 0, so its top-k is renormalised,
  `p̂_i = p_i^(1/T) / Σ_K p_j^(1/T)`, and the term is
  `T² Σ_K p̂_i (log p̂_i − log q_i)` with `q = softmax(z_s / T)` over the
  whole vocabulary. Exact at any temperature: the top-k of a tempered
  softmax, renormalised, needs only the top-k log-probabilities.
- `"symmetric_uniform"`: the tail is one bucket for both distributions,
  `T² [Σ_K p_i (log p_i − log q_i) + r (log r − log(1 − Σ_K q_i))]` (the
  KL between the (k+1)-outcome distributions: top-k tokens plus "any
  other"). Needs the record's temperature: the tail mass at another
  temperature is not recorded (DistillKit's `get_target_logprobs`, in
  `distillkit/lossfuncs/common.py`, approximates it as if the tail were
  one token, `r^(T_record/T)`).

Both equal the dense `T² KL(softmax(z_t/T) ‖ softmax(z_s/T))` when `k` is
the vocabulary size. docs/methods.md §10 ("Token records") gives the
error against the dense KL.

Example:

```python
term = kd.losses.SparseKLDistillation(temperature=1.0)
distiller = kd.Distiller(kd.offline.RecordedTeacher("rec"), student, term)
```
"""

import keras
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.divergences import kl_from_logs
from keras_kd.model_outputs import PROBABILITY_FLOOR

#: The values of `missing_probability_handling`, as DistillKit names them.
MISSING_PROBABILITY_HANDLING = ("zero", "symmetric_uniform")


def sparse_kl(
    student_logits,
    topk_logits,
    topk_indices,
    tail_log_mass=None,
    temperature=1.0,
    missing_probability_handling="zero",
):
    """`T² · KL` per token between a teacher's top-k and the student.

    Args:
        student_logits: `(..., V)` student logits.
        topk_logits: `(..., k)` the teacher's top-k logits up to a constant
            per token (a record gives `T_record · log p`). With
            `"symmetric_uniform"`, `topk_logits / T` must be the
            log-probabilities themselves.
        topk_indices: `(..., k)` their vocabulary indices.
        tail_log_mass: `(...)` `log r` at the temperature `temperature`
            (`-inf` for no tail); read by `"symmetric_uniform"` only.
        temperature: `T`, applied to both sides.
        missing_probability_handling: `"zero"` or `"symmetric_uniform"`
            (see the module docstring).

    Returns float32 of shape `(...)`.

    Example:

    ```python
    kl = sparse_kl(z_s, top_logits, top_indices, temperature=2.0)  # (B, T)
    ```
    """
    check_missing(missing_probability_handling)
    t = float(temperature)
    z = ops.cast(student_logits, "float32") / t
    indices = ops.cast(topk_indices, "int32")
    log_q = ops.take_along_axis(z, indices, axis=-1) - ops.logsumexp(
        z, axis=-1, keepdims=True
    )
    a = ops.cast(topk_logits, "float32") / t
    if missing_probability_handling == "zero":
        log_p = a - ops.logsumexp(a, axis=-1, keepdims=True)
        return (t * t) * kl_from_logs(log_p, log_q)
    if tail_log_mass is None:
        raise ValueError(
            "missing_probability_handling='symmetric_uniform' needs the "
            "teacher's tail mass (tail_log_mass)."
        )
    log_r = ops.cast(tail_log_mass, "float32")
    r = ops.exp(log_r)
    # log(1 − Σ_K q) as log(−expm1(log Σ_K q)): exact when Σ_K q is near 1.
    kept = ops.minimum(ops.logsumexp(log_q, axis=-1), 0.0)
    log_q_tail = ops.log(ops.maximum(-ops.expm1(kept), PROBABILITY_FLOOR))
    tail = ops.where(r > 0, r * (ops.where(r > 0, log_r, 0.0) - log_q_tail), 0.0)
    return (t * t) * (kl_from_logs(a, log_q) + tail)


def check_missing(value):
    if value not in MISSING_PROBABILITY_HANDLING:
        raise ValueError(
            f"Unknown missing_probability_handling {value!r}; use one of "
            f"{MISSING_PROBABILITY_HANDLING} (DistillKit's names)."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class SparseKLDistillation(DistillationTerm):
    """Sparse KL from a token record's top-k targets, per token.

    `T² · KL` between the teacher's recorded top-k (plus, or renormalised
    without, its tail) and the student's softmax at temperature `T`, one
    value per token, which `kd.Distiller` averages over the real tokens of
    a `(batch, length)` `sample_weight` (`Σ w · kl / Σ w`). The teacher is
    a `kd.offline.RecordedTeacher` of a `kd.offline.record_tokens` record;
    for a live teacher use `kd.losses.LogitsDistillation`.

    Args:
        temperature: `T`. Any value with `"zero"`; the record's
            temperature with `"symmetric_uniform"` (checked before
            training).
        missing_probability_handling: `"zero"` (default, as DistillKit's):
            renormalise the top-k; `"symmetric_uniform"`: keep the tail
            mass as one bucket. See `sparse_kl`.

    Example:

    ```python
    distiller = kd.Distiller(
        kd.offline.RecordedTeacher("rec"), student,
        kd.losses.SparseKLDistillation(1.0, "symmetric_uniform"))
    ```
    """

    uses_logits = True
    reads_sequences = True
    #: Read by `kd.offline.RecordedTeacher.check_terms`: this term reads a
    #: token record's top-k targets.
    reads_top_k = True

    def __init__(self, temperature=1.0, missing_probability_handling="zero", **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        check_missing(missing_probability_handling)
        self.temperature = float(temperature)
        self.missing_probability_handling = missing_probability_handling

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(teacher_outputs_shape) != 1:
            raise ValueError(
                f"SparseKLDistillation reads one teacher's record, got "
                f"{len(teacher_outputs_shape)} teachers; record an ensemble "
                f"as one teacher model, or use one term per record."
            )
        if "topk_logits" not in teacher_outputs_shape[0]:
            raise ValueError(
                "SparseKLDistillation reads a token record's top-k targets; "
                "give kd.offline.RecordedTeacher(path) of a "
                "kd.offline.record_tokens record as the teacher. For a live "
                "teacher use kd.losses.LogitsDistillation."
            )

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        out = teacher_outputs[0]
        return sparse_kl(
            student_outputs["logits"],
            out["topk_logits"],
            out["topk_indices"],
            out.get("tail_log_mass"),
            self.temperature,
            self.missing_probability_handling,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "missing_probability_handling": self.missing_probability_handling,
        }
