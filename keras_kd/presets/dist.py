"""DIST preset (Huang et al., NeurIPS 2022) with the official CIFAR-100
settings (docs/methods.md §7, DIST)."""

from keras_kd import losses
from keras_kd.presets.registry import register

# hunto/image_classification_sota at d9662f7 (DIST_KD's `classification`
# submodule): configs/strategies/distill/dist_cifar.yaml:34-36 give
# `ori_loss_weight: 1.`, `kd_loss_weight: 2.`, `kd: dist_t4`, and
# lib/models/losses/kd_loss.py:31-33 turns `dist_t4` into
# `DIST(beta=1, gamma=1, tau=4)`. ImageNet (resnet_dist.yaml:28-30) uses
# `kd: 'dist'`, i.e. tau = 1 (kd_loss.py:29-30), with the same weights.


@register(
    "dist",
    help="DIST: Pearson-correlation relations of tempered predictions, "
    "inter-class and intra-class (Huang et al., NeurIPS 2022).",
    reference="hunto/DIST_KD (classification = hunto/image_classification_sota "
    "@d9662f7): lib/models/losses/dist_kd.py:4-34; "
    "lib/models/losses/kd_loss.py:31-33; "
    "configs/strategies/distill/dist_cifar.yaml:34-36",
    defaults={
        "dist_beta": 1.0,
        "dist_gamma": 1.0,
        "dist_temperature": 4.0,
        "dist_weight": 2.0,
    },
    student_loss_weight=1.0,
)
def dist(teachers, student, dist_beta, dist_gamma, dist_temperature, dist_weight):
    """One `StrongerTeacherDistillation` term with weight `dist_weight`."""
    return [
        (
            "dist",
            losses.StrongerTeacherDistillation(
                beta=dist_beta,
                gamma=dist_gamma,
                temperature=dist_temperature,
                name="dist",
            ),
            dist_weight,
        )
    ]
