"""FitNets (docs/methods.md §0; docs/methods.md §11)."""

from keras_kd import losses
from keras_kd import models
from keras_kd.presets.registry import register


@register(
    "fitnets",
    help="MSE of a Conv-BN-ReLU regressor (ConvReg) of the student's hint "
    "layer 2 to the teacher's (Romero et al., ICLR 2015; §0).",
    reference="HobbitLong/RepDistiller train_student.py (--hint_layer 2, "
    "beta 100 for 'hint'), models/util.py ConvReg.",
    defaults={
        "fitnets_weight": 100.0,
        "teacher_layer": None,
        "student_layer": None,
        "hint_layer": 2,
        "fitnets_aligner": "hint",
    },
    student_loss_weight=1.0,
)
def _fitnets(
    teachers,
    student,
    fitnets_weight,
    teacher_layer,
    student_layer,
    hint_layer,
    fitnets_aligner,
):
    t, s = teacher_layer, student_layer
    if not (t and s):
        try:
            hint_t, hint_s = models.hint_layer_names(teachers[0], student, hint_layer)
        except ValueError as e:
            raise ValueError(
                f"{e} Or name the layers with teacher_layer=... and "
                f"student_layer=... (--teacher_layer, --student_layer)."
            ) from None
        t, s = t or hint_t, s or hint_s
    return [
        (
            "fitnets",
            losses.FeatureAlignment(t, s, aligner=fitnets_aligner, name="fitnets"),
            fitnets_weight,
        )
    ]
