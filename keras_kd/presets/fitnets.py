"""FitNets (docs/methods.md §0)."""

from keras_kd import losses
from keras_kd.presets._layers import last_stage
from keras_kd.presets.registry import register


@register(
    "fitnets",
    help="MSE of a Conv1x1+BN regressor of one student stage to the "
    "teacher's (Romero et al., ICLR 2015; §0).",
    reference="HobbitLong/RepDistiller train_student.py (--hint_layer, "
    "beta 100 for 'hint'), models/util.py ConvReg.",
    defaults={"fitnets_weight": 100.0, "teacher_layer": None,
              "student_layer": None},
    student_loss_weight=1.0,
)
def _fitnets(teachers, student, fitnets_weight, teacher_layer, student_layer):
    t = last_stage(teachers[0], "teacher", teacher_layer)
    s = last_stage(student, "student", student_layer)
    return [("fitnets", losses.FeatureAlignment(t, s, aligner="linear",
                                                name="fitnets"),
             fitnets_weight)]
