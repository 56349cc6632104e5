"""Overhaul of feature distillation (docs/methods.md §9)."""

from keras_kd import losses
from keras_kd.models import preactivation_layer_names
from keras_kd.presets.registry import register


@register(
    "ofd",
    help="Partial L2 between pre-ReLU features, teacher clipped at a margin "
    "from its batch norms (Heo et al., ICCV 2019).",
    reference="clovaai/overhaul-distillation CIFAR-100/distiller.py, "
    "train_with_distillation.py (CE + sum / batch / 1000; t_net.train(), "
    "l.75); megvii-research/"
    "mdistiller mdistiller/distillers/OFD.py, engine/cfg.py "
    "(OFD.LOSS.FEAT_WEIGHT 0.001).",
    defaults={"ofd_weight": 1e-3},
    student_loss_weight=1.0,
    # Both official codes run the teacher in train mode (BatchNorm on batch
    # statistics): CIFAR-100/train_with_distillation.py:75, OFD.py:114-121.
    distiller_options={"teacher_batch_statistics": True},
)
def _ofd(teachers, student, ofd_weight):
    t_names, s_names = [preactivation_layer_names(m) for m in (teachers[0], student)]
    # The official `_align_list` keeps the last stages of the longer list.
    count = min(len(t_names), len(s_names))
    return [
        (
            "ofd",
            losses.OverhaulFeatureDistillation.from_teacher(
                teachers, t_names[-count:], s_names[-count:], name="ofd"
            ),
            ofd_weight,
        )
    ]
