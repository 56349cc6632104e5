"""CTKD presets (Li et al., AAAI 2023) with zhengli97/CTKD's CIFAR-100
settings (scripts/run_cifar_distill.sh)."""

from keras_kd import losses
from keras_kd.presets.registry import register

# train_student.py: --t_start 1 --t_end 20 (T = 1 + 20·sigmoid(θ)), θ₀ = 1
# (models/temp_global.py); --cosine_decay 1 --decay_max 0 --decay_min -1
# --decay_loops 10 (λ from 0 to 1 over 10 epochs); --mlp_name global.
CTKD_DEFAULTS = {
    "mode": "global",
    "t_min": 1.0,
    "t_scale": 20.0,
    "initial_value": 1.0,
    "lambda_start": 0.0,
    "lambda_end": 1.0,
    "lambda_epochs": 10,
    "schedule": "cosine",
}


@register(
    "ctkd",
    help="Curriculum temperature KD: a learnable adversarial temperature "
    "(Li et al., AAAI 2023).",
    reference="zhengli97/CTKD: train_student.py (CosineDecay, Global_T use), "
    "models/temp_global.py, scripts/run_cifar_distill.sh (-r 0.1 -a 0.9)",
    defaults={**CTKD_DEFAULTS, "kd_weight": 0.9},
    student_loss_weight=0.1,
    epoch_schedules=("lambda_epochs",),
)
def ctkd(teachers, student, kd_weight, **options):
    """One `CurriculumTemperatureDistillation` term with weight 0.9."""
    return [
        (
            "ctkd",
            losses.CurriculumTemperatureDistillation(name="ctkd", **options),
            kd_weight,
        )
    ]
