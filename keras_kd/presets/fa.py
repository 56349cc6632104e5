"""Feature alignment, one or several teachers (docs/methods.md §1)."""

from keras_kd import losses
from keras_kd.presets._layers import kd_term
from keras_kd.presets._layers import last_stage
from keras_kd.presets.registry import register

_DEFAULTS = {
    "kd_temperature": 4.0,
    "kd_weight": 0.9,
    "fa_weight": 100.0,
    "fa_aligner": "nonlinear",
    "teacher_layer": None,
    "student_layer": None,
}
_REFERENCE = (
    "docs/methods.md §1 (KD + β·mean((g(F_s) − F_t)²) at the last "
    "stage; β as FitNets' 100)."
)


def _fa(
    teachers,
    student,
    kd_temperature,
    kd_weight,
    fa_weight,
    fa_aligner,
    teacher_layer,
    student_layer,
):
    t = last_stage(teachers[0], "teacher", teacher_layer)
    s = last_stage(student, "student", student_layer)
    return [
        kd_term(kd_temperature, kd_weight),
        ("fa", losses.FeatureAlignment(t, s, aligner=fa_aligner, name="fa"), fa_weight),
    ]


register(
    "fa",
    help="KD + non-linear feature alignment at the last stage (§1).",
    reference=_REFERENCE,
    defaults=_DEFAULTS,
    student_loss_weight=1.0,
)(_fa)
register(
    "fa_multi",
    help="fa with several teachers, one aligner each; two teachers by default (§1).",
    reference=_REFERENCE,
    defaults=_DEFAULTS,
    student_loss_weight=1.0,
    min_teachers=2,
)(_fa)
