"""DKD presets (Zhao et al., CVPR 2022) with mdistiller's CIFAR-100 settings."""

from keras_kd import losses
from keras_kd.presets.registry import register

# β of mdistiller configs/cifar100/dkd/<pair>.yaml (α = 1, T = 4, warm-up
# 20 and CE weight 1 in every config); pairs whose students are not in
# keras_kd.models (ShuffleNet, ResNet50 teacher) keep the default β = 8.
DKD_BETA = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


@register(
    "dkd",
    help="Decoupled KD: target-class + non-target-class KD (Zhao et al., CVPR 2022).",
    reference="mdistiller: mdistiller/distillers/DKD.py; "
    "mdistiller/engine/cfg.py (CFG.DKD); configs/cifar100/dkd/*.yaml",
    defaults={"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20},
    pair_defaults={pair: {"beta": beta} for pair, beta in DKD_BETA.items()},
    student_loss_weight=1.0,
    epoch_schedules=("warmup_epochs",),
)
def dkd(teachers, student, alpha, beta, temperature, warmup_epochs):
    """One `DecoupledDistillation` term with weight 1 (α, β inside)."""
    return [
        (
            "dkd",
            losses.DecoupledDistillation(
                alpha=alpha,
                beta=beta,
                temperature=temperature,
                warmup_epochs=warmup_epochs,
                name="dkd",
            ),
            1.0,
        )
    ]
