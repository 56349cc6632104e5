"""Layer choices shared by the presets: stages and the Hinton KD term."""

from keras_kd import losses
from keras_kd import models


def last_stage(model, role, given=None):
    """`given`, else the last stage of `model` (a ValueError naming the
    `<role>_layer` hyper-parameter if the model has no stages)."""
    if given:
        return given
    try:
        return models.stage_layer_names(model)[-1]
    except ValueError as e:
        raise ValueError(
            f"{e} Name the {role} layer to distil with "
            f"{role}_layer=... (--{role}_layer)."
        ) from None


def matched_stages(teacher, student):
    """The last `n` stages (stem excluded) of both models, `n` the smaller
    count: `(teacher_names, student_names)`."""
    stages = [
        [n for n in models.stage_layer_names(m) if n != "stem"]
        for m in (teacher, student)
    ]
    count = min(map(len, stages))
    return stages[0][-count:], stages[1][-count:]


def kd_term(kd_temperature, kd_weight):
    """`("kd", LogitsDistillation(T), weight)`, shared by kd, fa, afd, rtk."""
    return ("kd", losses.LogitsDistillation(kd_temperature, name="kd"), kd_weight)
