"""Specialisation KD: feature-level KD per stage (docs/methods.md §2)."""

from keras_kd import losses
from keras_kd.presets._layers import matched_stages
from keras_kd.presets.registry import register


@register(
    "skd",
    help="Feature-level KD only, an adapter per stage, no logit term; the "
    "teacher may have more classes (§2).",
    reference="docs/methods.md §2 (β 100 per stage, Conv1x1+BN adapters).",
    defaults={"skd_weight": 100.0, "skd_aligner": "linear", "skd_layers": None},
    student_loss_weight=1.0,
    num_classes_may_differ=True,
)
def _skd(teachers, student, skd_weight, skd_aligner, skd_layers):
    if skd_layers:
        t_layers, s_layers = list(skd_layers), list(skd_layers)
    else:
        t_layers, s_layers = matched_stages(teachers[0], student)
    return [
        (
            f"skd_{s}",
            losses.FeatureAlignment(t, s, aligner=skd_aligner, name=f"skd_{s}"),
            skd_weight,
        )
        for t, s in zip(t_layers, s_layers)
    ]
