"""Variational information distillation (docs/methods.md §9)."""

from keras_kd import losses
from keras_kd import models
from keras_kd.presets.registry import register


@register(
    "vid",
    help="Gaussian likelihood of the teacher's stage outputs under a learned "
    "regressor and variance (Ahn et al., CVPR 2019).",
    reference="HobbitLong/RepDistiller distiller_zoo/VID.py, train_student.py "
    "(VIDLoss(s, t, t) on feat[1:-1], -r 1 -a 0 -b 1); megvii-research/"
    "mdistiller mdistiller/distillers/VID.py, engine/cfg.py (CFG.VID).",
    defaults={"vid_weight": 1.0, "init_pred_var": 5.0},
    student_loss_weight=1.0,
)
def _vid(teachers, student, vid_weight, init_pred_var):
    t_names, s_names = paired_stages(teachers[0], student)
    return [
        (
            "vid",
            losses.VariationalInformationDistillation(
                t_names, s_names, init_pred_var=init_pred_var, name="vid"
            ),
            vid_weight,
        )
    ]


def paired_stages(teacher, student):
    """The zoo stages after the stem, paired from the first as the official
    `zip` over the features: `(teacher_names, student_names)`."""
    stages = [
        [n for n in models.stage_layer_names(m) if n != "stem"]
        for m in (teacher, student)
    ]
    count = min(map(len, stages))
    return stages[0][:count], stages[1][:count]
