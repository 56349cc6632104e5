"""Attention-based feature distillation and its top-k variant RTK
(docs/methods.md §4)."""

from keras_kd import losses
from keras_kd import models
from keras_kd.presets._layers import kd_term
from keras_kd.presets.registry import register

_REFERENCE = (
    "clovaai/attention-feature-distillation (qk_dim 128, "
    "beta 200); docs/methods.md §4 for RTK's top-k keys."
)


def _blocks(teachers, student):
    return [models.block_layer_names(m) for m in (teachers[0], student)]


@register(
    "afd",
    help="KD + attention-based feature distillation over the residual-block "
    "outputs (Ji et al., AAAI 2021; §4).",
    reference=_REFERENCE,
    defaults={
        "kd_temperature": 4.0,
        "kd_weight": 0.9,
        "afd_weight": 200.0,
        "afd_qk_dim": 128,
    },
    student_loss_weight=1.0,
)
def _afd(teachers, student, kd_temperature, kd_weight, afd_weight, afd_qk_dim):
    t, s = _blocks(teachers, student)
    term = losses.AttentionFeatureDistillation(t, s, qk_dim=afd_qk_dim, name="afd")
    return [kd_term(kd_temperature, kd_weight), ("afd", term, afd_weight)]


@register(
    "rtk",
    help="KD + AFD over the top-k representative keys (§4).",
    reference=_REFERENCE,
    defaults={
        "kd_temperature": 4.0,
        "kd_weight": 0.9,
        "afd_weight": 200.0,
        "afd_qk_dim": 128,
        "rtk_num_keys": 2,
        "rtk_query_side": "student",
    },
    student_loss_weight=1.0,
)
def _rtk(
    teachers,
    student,
    kd_temperature,
    kd_weight,
    afd_weight,
    afd_qk_dim,
    rtk_num_keys,
    rtk_query_side,
):
    t, s = _blocks(teachers, student)
    term = losses.RepresentativeTeacherKeys(
        t,
        s,
        qk_dim=afd_qk_dim,
        num_keys=rtk_num_keys,
        query_side=rtk_query_side,
        name="rtk",
    )
    return [kd_term(kd_temperature, kd_weight), ("rtk", term, afd_weight)]
