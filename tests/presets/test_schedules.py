"""kd.presets.build(..., epochs=E): the epoch schedules of the 240-epoch
protocol scale by E/240 (rounded, at least 1); explicit values win."""

import pytest

import keras_kd as kd
from keras_kd.presets import registry

pytestmark = pytest.mark.multi_backend

# The official epoch counts of every preset with a schedule.
OFFICIAL = {
    "dkd": {"warmup_epochs": 20},
    "dkd+ls": {"warmup_epochs": 20},
    "reviewkd": {"warmup_epochs": 20},
    "ctkd": {"lambda_epochs": 10},
    "ctkd+ls": {"lambda_epochs": 10},
}


class Named:
    """A teacher or student by name only (the presets built here read no
    layer)."""

    def __init__(self, name):
        self.name = name


def schedules(name, epochs, **overrides):
    """The epoch schedules `build` gives preset `name` for a run of `epochs`."""
    preset = kd.presets.get(name)
    values = preset.hyperparameters(
        [Named("resnet56")], Named("resnet20"), overrides, epochs
    )
    return {key: values[key] for key in preset.epoch_schedules}


def test_every_epoch_count_default_is_a_declared_schedule():
    declared = {
        name: dict.fromkeys(kd.presets.get(name).epoch_schedules)
        for name in kd.presets.names()
    }
    found = {
        name: dict.fromkeys(k for k in kd.presets.get(name).defaults if "epoch" in k)
        for name in kd.presets.names()
    }
    assert declared == found
    assert {n: s for n, s in declared.items() if s}.keys() == OFFICIAL.keys()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_240_epochs_and_none_give_the_official_values(name):
    assert schedules(name, 240) == OFFICIAL[name]
    assert schedules(name, None) == OFFICIAL[name]
    assert kd.presets.get(name).defaults.items() >= OFFICIAL[name].items()


@pytest.mark.parametrize(
    "epochs,warmup,ramp", [(24, 2, 1), (12, 1, 1), (1, 1, 1), (36, 3, 2), (480, 40, 20)]
)
def test_schedules_scale_rounded_at_least_one(epochs, warmup, ramp):
    assert schedules("dkd", epochs) == {"warmup_epochs": warmup}
    assert schedules("reviewkd", epochs) == {"warmup_epochs": warmup}
    assert schedules("ctkd", epochs) == {"lambda_epochs": ramp}


def test_build_passes_the_scaled_schedules_to_the_terms():
    teacher, student = Named("resnet56"), Named("resnet20")
    (dkd,) = kd.presets.build("dkd", teacher, student, epochs=24)["distillation_losses"]
    assert dkd.warmup_epochs == 2
    (ctkd,) = kd.presets.build("ctkd+ls", teacher, student, epochs=24)[
        "distillation_losses"
    ]
    assert ctkd.lambda_epochs == 1
    # A combination scales each part.
    both = kd.presets.build("dkd+ctkd", teacher, student, epochs=120)
    terms = {t.name: t for t in both["distillation_losses"]}
    assert (terms["dkd"].warmup_epochs, terms["ctkd"].lambda_epochs) == (10, 5)
    (dkd,) = kd.presets.build("dkd", teacher, student)["distillation_losses"]
    assert dkd.warmup_epochs == 20


def test_an_explicit_value_wins_over_the_scaled_one():
    teacher, student = Named("resnet56"), Named("resnet20")
    (dkd,) = kd.presets.build("dkd", teacher, student, epochs=12, warmup_epochs=5)[
        "distillation_losses"
    ]
    assert dkd.warmup_epochs == 5
    assert schedules("ctkd", 24, lambda_epochs=7) == {"lambda_epochs": 7}
    assert schedules("dkd", 24, warmup_epochs=0) == {"warmup_epochs": 0}


@pytest.mark.parametrize("epochs", [0, -3, 2.5, True, "24"])
def test_bad_epochs_are_refused(epochs):
    with pytest.raises(ValueError, match="`epochs` must be a positive int.*None"):
        kd.presets.build("dkd", Named("a"), Named("b"), epochs=epochs)
    with pytest.raises(ValueError, match="`epochs` must be a positive int"):
        kd.presets.build("kd", Named("a"), Named("b"), epochs=epochs)


def test_register_checks_the_schedules():
    def builder(teachers, student, warmup_epochs):
        return []

    for defaults, message in [
        ({"warmup_epochs": 2.5}, "integer default"),
        ({"other": 1}, "'warmup_epochs' must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            registry.register(
                "_test_schedule",
                help="",
                reference="",
                defaults=defaults,
                student_loss_weight=1.0,
                epoch_schedules=("warmup_epochs",),
            )(builder)
    with pytest.raises(ValueError, match="'epochs' is `build`'s argument"):
        registry.register(
            "_test_schedule",
            help="",
            reference="",
            defaults={"epochs": 1},
            student_loss_weight=1.0,
        )(builder)
    assert "_test_schedule" not in kd.presets.names()
