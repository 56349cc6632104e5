"""Dual-level KD (docs/methods.md §3)."""

from keras_kd import losses
from keras_kd.presets.registry import register


@register(
    "dlkd",
    help="Dual-level KD on 4 rotated views: correlation, supervised "
    "contrastive and alignment of the pooled 'features' (§3).",
    reference="docs/methods.md §3 (CIFAR weights 50/1/20; ImageNet 20/0.5/10).",
    defaults={
        "dlkd_correlation_weight": 50.0,
        "dlkd_contrastive_weight": 1.0,
        "dlkd_alignment_weight": 20.0,
        "dlkd_crop_padding": 0,
        "dlkd_pad_value": 0.0,
    },
    student_loss_weight=1.0,
)
def _dlkd(
    teachers,
    student,
    dlkd_correlation_weight,
    dlkd_contrastive_weight,
    dlkd_alignment_weight,
    dlkd_crop_padding,
    dlkd_pad_value,
):
    """`dlkd_crop_padding=4` with `dlkd_pad_value=-mean/std` (black): the
    official per-view augmentation (the CLI sets both under augmentation);
    give the Distiller no other crop or flip then."""
    term = losses.DualLevelDistillation(
        "features",
        "features",
        correlation_weight=dlkd_correlation_weight,
        contrastive_weight=dlkd_contrastive_weight,
        alignment_weight=dlkd_alignment_weight,
        crop_padding=dlkd_crop_padding,
        pad_value=dlkd_pad_value,
        name="dlkd",
    )
    return [("dlkd", term, 1.0)]
