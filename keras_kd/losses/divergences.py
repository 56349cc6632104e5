"""Divergences between tempered teacher and student distributions, in
log space: reverse KL and GKD's generalized Jensen–Shannon divergence.

All take log-probabilities over the last (class or vocabulary) axis and
return one float32 value per sample or per token, without the `T²` factor
(`LogitsDistillation` applies it). docs/methods.md §12 gives the formulas
and TRL's `generalized_jsd_loss`, whose `beta` convention they follow.
"""

import math
import numbers

from keras import ops

from keras_kd.model_outputs import PROBABILITY_FLOOR

#: The values of `LogitsDistillation(divergence=...)`.
DIVERGENCES = ("kl", "reverse_kl", "jsd")


def teacher_log_probabilities(teacher_outputs, teacher_weights, temperature):
    """`log Σ_m w_m p_m` with `p_m = softmax(z_m / T)`, in float32.

    Teacher logits go through `log_softmax`, and several teachers are mixed
    with `logsumexp`, so no probability is rounded to 0 on the way. Fixed
    probabilities (a `kd.SoftLabelTeacher`, a recorded teacher) are used as
    given, not re-tempered; a 0 is read as the smallest normal float32 (its
    log is −87.3), so the reverse KL stays finite where the teacher rules a
    class out.
    """
    logs = []
    for weight, out in zip(teacher_weights, teacher_outputs):
        if "probabilities" in out:
            p = ops.cast(out["probabilities"], "float32")
            log_p = ops.log(ops.maximum(p, PROBABILITY_FLOOR))
        else:
            z = ops.cast(out["logits"], "float32")
            log_p = ops.log_softmax(z / temperature, axis=-1)
        logs.append(log_p if len(teacher_outputs) == 1 else log_p + math.log(weight))
    if len(logs) == 1:
        return logs[0]
    return ops.logsumexp(ops.stack(logs), axis=0)


def kl_from_logs(log_p, log_q):
    """`KL(p ‖ q) = Σ_c p · (log p − log q)` from log-probabilities.

    A class whose `p` underflows to 0 contributes 0, with a finite gradient.
    """
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def reverse_kl(log_p_teacher, log_p_student):
    """`KL(p_s ‖ p_t)`: the student's mass where the teacher has little
    costs most (mode-seeking), per sample or token."""
    return kl_from_logs(log_p_student, log_p_teacher)


def generalized_jsd(log_p_teacher, log_p_student, beta):
    """GKD's generalized JSD, `β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)` with the
    mixture `m = β·p_t + (1−β)·p_s`, for `0 < β < 1`.

    `log m` is a `logsumexp` of `log β + log p_t` and `log(1−β) + log p_s`,
    so it is finite wherever either distribution is, and neither KL divides
    by a probability that underflowed.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(
            f"generalized_jsd needs 0 < beta < 1, got {beta}; beta=0 is the "
            f"forward KL and beta=1 the reverse KL."
        )
    log_m = ops.logsumexp(
        ops.stack([log_p_teacher + math.log(beta), log_p_student + math.log1p(-beta)]),
        axis=0,
    )
    return beta * kl_from_logs(log_p_teacher, log_m) + (1.0 - beta) * kl_from_logs(
        log_p_student, log_m
    )


def check_divergence(divergence, beta, loss_is_kl, loss):
    """Raises a ValueError for an unknown divergence, a beta outside [0, 1],
    or a divergence other than `"kl"` with a non-KL Keras `loss`."""
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"Unknown divergence {divergence!r} for LogitsDistillation; use "
            f"one of {DIVERGENCES}."
        )
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta must be in [0, 1] (the teacher's share of the JSD mixture; "
            f"0 is the forward KL, 1 the reverse KL), got {beta}."
        )
    if divergence != "kl" and not loss_is_kl:
        raise ValueError(
            f"LogitsDistillation(divergence={divergence!r}, loss={loss!r}): "
            f"the divergence replaces the KL, so it cannot be combined with "
            f"another Keras loss. Use loss='kl_divergence' (the default) "
            f"with divergence={divergence!r}, or divergence='kl' with "
            f"loss={loss!r}."
        )
