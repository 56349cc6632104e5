"""ReffAKD: soft labels from an autoencoder, no teacher network
(docs/methods.md §5)."""

from keras_kd import losses
from keras_kd.presets.registry import register


@register(
    "reffakd",
    help="No teacher: autoencoder class-similarity soft labels (§5).",
    reference="docs/methods.md §5 ((1−α)·CE + α·T²·KL, α 0.9, T 5).",
    defaults={"reffakd_alpha": 0.9, "reffakd_temperature": 5.0},
    student_loss_weight=lambda hp: 1.0 - hp["reffakd_alpha"],
    teacher="soft_labels",
)
def _reffakd(teachers, student, reffakd_alpha, reffakd_temperature):
    return [
        (
            "reffakd",
            losses.LogitsDistillation(reffakd_temperature, name="reffakd"),
            reffakd_alpha,
        )
    ]
