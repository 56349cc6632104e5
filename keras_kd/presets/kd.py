"""Hinton KD (docs/methods.md §0)."""

from keras_kd.presets._layers import kd_term
from keras_kd.presets.registry import register


@register(
    "kd",
    help="Hinton KD, T²·KL of tempered softmaxes (Hinton et al., 2015; §0).",
    reference="Hinton et al., arXiv:1503.02531; CRD's CIFAR setup "
    "(HobbitLong/RepDistiller train_student.py: T=4, 0.1·CE + 0.9·KD).",
    defaults={"kd_temperature": 4.0, "kd_weight": 0.9},
    student_loss_weight=0.1,
)
def _kd(teachers, student, kd_temperature, kd_weight):
    return [kd_term(kd_temperature, kd_weight)]
