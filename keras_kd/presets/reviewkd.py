"""ReviewKD presets (Chen et al., CVPR 2021; the authors' CIFAR-100 recipe)."""

from keras_kd import losses
from keras_kd import models
from keras_kd.presets.registry import register

# `--kd-loss-weight` per pair of dvlab-research/ReviewKD
# CIFAR-100/script/reviewKD.sh (its `wrn-40-2` is the zoo's `wrn_40_2`);
# `shufflev1` and `shufflev2` are the script's names of students outside
# keras_kd.models. Other pairs keep train.py's default 1.0.
REVIEWKD_WEIGHT = {
    ("wrn_40_2", "wrn_16_2"): 5.0,
    ("wrn_40_2", "wrn_40_1"): 5.0,
    ("wrn_40_2", "shufflev1"): 5.0,
    ("resnet32x4", "resnet8x4"): 5.0,
    ("resnet32x4", "shufflev1"): 5.0,
    ("resnet32x4", "shufflev2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}


def review_layer_names(model, preact):
    """The layers ReviewKD taps: each stage after the stem, then `features`.

    With `preact` (the teacher side: mdistiller's `preact_feats`), each
    stage is read before its ReLU, as `kd.models.preactivation_layer_names`
    finds it: a ResNet's last sum (`block{s}_{n}_add`), a VGG stage's last
    batch norm, and for a pre-activation WRN the batch norm the stage
    output feeds (`block{s+1}_1_bn1`, then `final_bn`). Stages without a
    pre-activation layer (no separate ReLU, no batch norm reading them) are
    read as they are. Without `preact` (the student), the stage outputs.

    Example:

    ```python
    review_layer_names(keras_kd.models.wrn_40_2(), preact=True)
    # ['block2_1_bn1', 'block3_1_bn1', 'final_bn', 'features']
    ```
    """
    if preact:
        stages = models.preactivation_layer_names(model)
    else:
        stages = [n for n in models.stage_layer_names(model) if n != "stem"]
    return stages + ["features"]


@register(
    "reviewkd",
    help="Knowledge review: attention-based fusion of student stages and a "
    "hierarchical context loss (Chen et al., CVPR 2021).",
    reference="mdistiller: mdistiller/distillers/ReviewKD.py; "
    "mdistiller/engine/cfg.py (CFG.REVIEWKD); configs/cifar100/reviewkd.yaml. "
    "dvlab-research/ReviewKD: CIFAR-100/script/reviewKD.sh (weight per pair).",
    defaults={"weight": 1.0, "warmup_epochs": 20, "mid_channels": None},
    pair_defaults={pair: {"weight": w} for pair, w in REVIEWKD_WEIGHT.items()},
    student_loss_weight=1.0,
    epoch_schedules=("warmup_epochs",),
)
def _reviewkd(teachers, student, weight, warmup_epochs, mid_channels):
    """ReviewKD between the zoo stages (teacher pre-activation) + pooled."""
    if len(teachers) != 1:
        raise ValueError(
            f"The 'reviewkd' preset distils one teacher, got {len(teachers)}."
        )
    term = losses.ReviewDistillation(
        review_layer_names(teachers[0], preact=True),
        review_layer_names(student, preact=False),
        mid_channels=mid_channels,
        warmup_epochs=warmup_epochs,
        name="reviewkd",
    )
    return [("reviewkd", term, weight)]
