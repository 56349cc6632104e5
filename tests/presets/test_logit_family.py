"""The DKD, logit-standardization and CTKD presets: official CIFAR-100
hyper-parameters per pair, and the terms their builders return."""

import importlib
import math
import sys
import types

import pytest

import keras_kd as kd

SPECS = {}

try:
    importlib.import_module("keras_kd.presets.registry")
    HAVE_REGISTRY = True
except ImportError:
    # The registry is built elsewhere; record what the modules register.
    HAVE_REGISTRY = False
    stub = types.ModuleType("keras_kd.presets.registry")

    def register(name, **spec):
        def wrap(fn):
            SPECS[name] = dict(spec, fn=fn)
            return fn

        return wrap

    stub.register = register
    sys.modules["keras_kd.presets.registry"] = stub

for module in ("dkd", "ctkd", "ls"):
    importlib.import_module(f"keras_kd.presets.{module}")


class Named:
    def __init__(self, name):
        self.name = name


def build(name, teacher, student, **overrides):
    """`kd.presets.build`'s keyword arguments, through the stub if needed."""
    if HAVE_REGISTRY:
        return kd.presets.build(name, teacher, student, **overrides)
    spec = SPECS[name]
    options = dict(spec["defaults"])
    options.update(spec.get("pair_defaults", {}).get((teacher.name, student.name), {}))
    options.update(overrides)
    entries = spec["fn"]([teacher], student, **options)
    return {
        "distillation_losses": [term for _, term, _ in entries],
        "distillation_loss_weights": [w for _, _, w in entries],
        "student_loss_weight": spec["student_loss_weight"],
        "weighting": "additive",
    }


@pytest.mark.parametrize(
    "pair,beta",
    [
        (("resnet32x4", "resnet8x4"), 8.0),
        (("wrn_40_2", "wrn_16_2"), 6.0),
        (("resnet56", "resnet20"), 2.0),
        (("vgg13", "vgg8"), 6.0),
        (("resnet20", "resnet20"), 8.0),
    ],
)
def test_dkd_preset_uses_mdistiller_beta_per_pair(pair, beta):
    kwargs = build("dkd", Named(pair[0]), Named(pair[1]))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.DecoupledDistillation)
    assert (term.alpha, term.beta, term.temperature, term.warmup_epochs) == (
        1.0,
        beta,
        4.0,
        20,
    )
    assert not term.standardize
    assert kwargs["student_loss_weight"] == 1.0
    assert kwargs["distillation_loss_weights"] == [1.0]


@pytest.mark.parametrize(
    "pair,t,w",
    [
        (("resnet32x4", "resnet8x4"), 2.0, 9.0),
        (("resnet110", "resnet20"), 4.0, 12.0),
        (("vgg13", "vgg8"), 3.0, 9.0),
    ],
)
def test_kd_ls_preset_uses_official_base_temperature_and_weight(pair, t, w):
    kwargs = build("kd+ls", Named(pair[0]), Named(pair[1]))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.LogitsDistillation) and term.standardize
    assert term.temperature == t and kwargs["distillation_loss_weights"] == [w]
    assert kwargs["student_loss_weight"] == 0.1


@pytest.mark.parametrize(
    "pair,t,w,beta",
    [
        (("resnet32x4", "resnet8x4"), 2.0, 9.0, 8.0),
        (("wrn_40_2", "wrn_16_2"), 2.0, 12.0, 2.0),
        (("resnet56", "resnet20"), 3.0, 18.0, 2.0),
    ],
)
def test_dkd_ls_preset_uses_official_logs(pair, t, w, beta):
    kwargs = build("dkd+ls", Named(pair[0]), Named(pair[1]))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.DecoupledDistillation) and term.standardize
    assert (term.temperature, term.beta, term.alpha) == (t, beta, 1.0)
    assert kwargs["distillation_loss_weights"] == [w]
    assert kwargs["student_loss_weight"] == 1.0


@pytest.mark.parametrize(
    "name,weight,standardize,t_min,t_scale",
    [("ctkd", 0.9, False, 1.0, 20.0), ("ctkd+ls", 9.0, True, 2.0, 40.0)],
)
def test_ctkd_presets_use_official_script(name, weight, standardize, t_min, t_scale):
    kwargs = build(name, Named("resnet56"), Named("resnet20"))
    (term,) = kwargs["distillation_losses"]
    assert isinstance(term, kd.losses.CurriculumTemperatureDistillation)
    assert term.standardize == standardize and term.mode == "global"
    assert (term.t_min, term.t_scale, term.initial_value) == (t_min, t_scale, 1.0)
    assert (term.lambda_start, term.lambda_end, term.lambda_epochs, term.schedule) == (
        0.0,
        1.0,
        10,
        "cosine",
    )
    assert kwargs["distillation_loss_weights"] == [weight]
    assert kwargs["student_loss_weight"] == 0.1


# min and max of the "temp" field over the 14 official CTKD+LS logs
# (sunshangquan/logit-standardization-KD logs/CTKD/*.txt): vgg13,MobileNetV2
# line 76 and wrn_40_2,MobileNetV2 line 6 (epoch 1).
LOGGED_T_MIN, LOGGED_T_MAX = 2.0012755393981934, 30.392593383789062


def test_ctkd_ls_temperature_covers_the_official_logs():
    (term,) = build("ctkd+ls", Named("resnet56"), Named("resnet20"))[
        "distillation_losses"
    ]
    term.build([{"logits": (None, 10)}], {"logits": (None, 10)})

    def temperature(theta):
        term.theta.assign(theta)
        return float(term.current_temperature())

    # Every logged run cools from its first epoch on, so T₀ (θ₀ = 1) must be
    # at least the hottest first-epoch value.
    assert temperature(1.0) >= LOGGED_T_MAX
    sweep = [temperature(theta) for theta in (-30.0, -15.0, -5.0, 0.0, 5.0, 30.0)]
    assert min(sweep) >= 2.0 and sweep == sorted(sweep)
    assert sweep[0] == pytest.approx(2.0, abs=1e-6) and sweep[1] < LOGGED_T_MIN
    assert sweep[-1] == pytest.approx(42.0, rel=1e-6) and sweep[-2] > LOGGED_T_MAX
    # The logged extremes are reached: T(logit((T − 2) / 40)) = T.
    for t in (LOGGED_T_MIN, LOGGED_T_MAX):
        p = (t - 2.0) / 40.0
        assert temperature(math.log(p / (1 - p))) == pytest.approx(t, rel=1e-5)


def test_overrides_win_over_pair_defaults():
    kwargs = build("dkd", Named("wrn_40_2"), Named("wrn_16_2"), beta=3.0)
    assert kwargs["distillation_losses"][0].beta == 3.0
