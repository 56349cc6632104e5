"""ReviewKD presets (Chen et al., CVPR 2021; mdistiller's CIFAR-100 recipe)."""

from keras_kd import losses
from keras_kd import models
from keras_kd.presets.registry import register


def review_layer_names(model, preact):
    """The layers ReviewKD taps: each stage after the stem, then `features`.

    With `preact` (the teacher side in mdistiller), a ResNet stage is read
    before its last ReLU (`block{s}_{n}_add`); stages without such a layer
    (e.g. WRN, whose stages end in the sum) are read as they are.
    """
    names = {layer.name for layer in model.layers}
    stages = [n for n in models.stage_layer_names(model) if n != "stem"]
    if preact:
        blocks = models.block_layer_names(model)
        stages = [_preact(stage, blocks, names) for stage in stages]
    return stages + ["features"]


def _preact(stage, blocks, names):
    index = stage[len("stage") :]
    last = [b for b in blocks if b.startswith(f"block{index}_")]
    add = f"{last[-1]}_add" if last else None
    return add if add in names else stage


@register(
    "reviewkd",
    help="Knowledge review: attention-based fusion of student stages and a "
    "hierarchical context loss (Chen et al., CVPR 2021).",
    reference="mdistiller: mdistiller/distillers/ReviewKD.py; "
    "mdistiller/engine/cfg.py (CFG.REVIEWKD); configs/cifar100/reviewkd.yaml",
    defaults={"weight": 1.0, "warmup_epochs": 20, "mid_channels": None},
    pair_defaults={("resnet32x4", "resnet8x4"): {"weight": 5.0}},
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
