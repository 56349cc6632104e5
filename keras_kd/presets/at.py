"""Attention transfer (docs/methods.md §0)."""

from keras_kd import losses
from keras_kd.presets._layers import matched_stages
from keras_kd.presets.registry import register


@register(
    "at",
    help="Attention transfer over the stages (Zagoruyko & Komodakis, ICLR 2017; §0).",
    reference="szagoruyko/attention-transfer; RepDistiller "
    "distiller_zoo/AT.py (p=2, beta 1000).",
    defaults={"at_weight": 1000.0},
    student_loss_weight=1.0,
)
def _at(teachers, student, at_weight):
    t, s = matched_stages(teachers[0], student)
    return [("at", losses.AttentionTransfer(t, s, name="at"), at_weight)]
