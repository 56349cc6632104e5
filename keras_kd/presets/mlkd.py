"""MLKD presets (Jin, Wang, Lin, CVPR 2023): the official CIFAR-100
settings, and MLKD with logit standardization (Sun et al., CVPR 2024).

The other temperatures (3, 5, 2, 6) are fixed in the official loss; the
config sets the first (`mlkd_temperature`). `mlkd_ce_weight` weights the
cross-entropy of both views: the Distiller's student loss on the weak view
and the term's `ce_strong` (a `student_loss_weight` override changes the
weak view's only).
"""

from keras_kd import losses
from keras_kd.presets.registry import register

#: The temperatures after the config's, in the official order.
OTHER_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)

_AUGMENTATION = {"mlkd_crop_padding": 0, "mlkd_mean": 0.0, "mlkd_std": 1.0}

# KD weight of logs/MLKD/mlkd,<teacher>,<student>,<T>,<weight>.txt where it
# is not the default 9 (T is 2 in every log; the ShuffleNet pair is not in
# keras_kd.models).
MLKD_LS_WEIGHT = {
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
}


def _term(temperature, weight, ce_weight, crop_padding, mean, std, standardize):
    return losses.MultiLevelLogitDistillation(
        temperatures=(temperature,) + OTHER_TEMPERATURES,
        kd_weight=weight,
        ce_weight=ce_weight,
        standardize=standardize,
        crop_padding=crop_padding,
        mean=mean,
        std=std,
        name="mlkd",
    )


@register(
    "mlkd",
    help="Multi-level logit KD: instance KD at 5 temperatures, class and "
    "batch relations, on weak and strong views (Jin et al., CVPR 2023).",
    reference="Jin-Ying/Multi-Level-Logit-Distillation: "
    "mdistiller/distillers/KD_ours.py; mdistiller/engine/cfg.py (CFG.KD); "
    "mdistiller/dataset/cifar100.py; configs/cifar100/ours/*.yaml",
    defaults={
        "mlkd_temperature": 4.0,
        "mlkd_weight": 0.9,
        "mlkd_ce_weight": 0.1,
        **_AUGMENTATION,
    },
    student_loss_weight=lambda values: values["mlkd_ce_weight"],
)
def _mlkd(
    teachers,
    student,
    mlkd_temperature,
    mlkd_weight,
    mlkd_ce_weight,
    mlkd_crop_padding,
    mlkd_mean,
    mlkd_std,
):
    """`mlkd_crop_padding=4` with the inputs' `mlkd_mean`, `mlkd_std` (8-bit
    units): the official per-view crop and flip (the CLI sets them under
    augmentation); give the Distiller no other crop or flip then."""
    term = _term(
        mlkd_temperature,
        mlkd_weight,
        mlkd_ce_weight,
        mlkd_crop_padding,
        mlkd_mean,
        mlkd_std,
        standardize=False,
    )
    return [("mlkd", term, 1.0)]


@register(
    "mlkd+ls",
    help="MLKD with z-scored logits in its KD parts (logit standardization, "
    "Sun et al., CVPR 2024).",
    reference="sunshangquan/logit-standardization-KD: "
    "mdistiller/distillers/MLKD.py (normalize, logit_stand); tools/train.py "
    "(--logit-stand --base-temp 2 --kd-weight 9); "
    "logs/MLKD/mlkd,<teacher>,<student>,<T>,<weight>.txt",
    defaults={
        "mlkd_temperature": 2.0,
        "mlkd_weight": 9.0,
        "mlkd_ce_weight": 0.1,
        **_AUGMENTATION,
    },
    pair_defaults={
        pair: {"mlkd_weight": weight} for pair, weight in MLKD_LS_WEIGHT.items()
    },
    student_loss_weight=lambda values: values["mlkd_ce_weight"],
)
def _mlkd_ls(
    teachers,
    student,
    mlkd_temperature,
    mlkd_weight,
    mlkd_ce_weight,
    mlkd_crop_padding,
    mlkd_mean,
    mlkd_std,
):
    """`MultiLevelLogitDistillation(standardize=True)`: T = 2, λ = 9."""
    term = _term(
        mlkd_temperature,
        mlkd_weight,
        mlkd_ce_weight,
        mlkd_crop_padding,
        mlkd_mean,
        mlkd_std,
        standardize=True,
    )
    return [("mlkd", term, 1.0)]
