"""The rows of `benchmarks/throughput.py`: what each configuration is and
how one pass of it is timed.

Each row is a callable `runner(x, y, batch_size) -> seconds` (one `fit`
over `x, y`, or `predict` for the teacher row) built by `build_runner`, or a
string saying why the row is skipped. `use_clock` chooses what a second is
(wall or process CPU time) for every runner. `gpu_suite_throughput.py` and
`replay_rows.py` build their rows from the same pieces.

Example:

```python
make_student = lambda: kd.models.get("resnet8x4", num_classes=100)
teacher = kd.models.get("resnet32x4", num_classes=100)
layer = same_shape_layer(teacher, make_student())
runner = build_runner("kd_logits", teacher, make_student, layer, 100)
x, y = make_data(64, 3, (32, 32, 3), 100, seed=0)
seconds = runner(x, y, batch_size=64)  # One timed fit over x, y.
```
"""

import time

import keras
import numpy as np
import torch_twins

import keras_kd as kd

TEMPERATURE = 4.0
KD_CONFIGS = (
    "kd_logits",
    "kd_logits_feature",
    "kd_fa",
    "kd_at",
    "kd_afd",
    "kd_rtk",
    "kd_skd",
    "kd_dlkd",
    "kd_reffakd",
)
ALL_CONFIGS = (
    (
        "student",
        "teacher_forward",
        "keras_logits",
        "keras_logits_feature",
    )
    + KD_CONFIGS
    + ("torch_kd",)
)
DESCRIPTIONS = {
    "student": "student alone (fit, CE)",
    "teacher_forward": "teacher forward alone (predict)",
    "fused_limit": "fused limit 1/(1/r_student + 1/r_teacher)",
    "keras_logits": "keras.distillation: logits KD",
    "keras_logits_feature": "keras.distillation: logits + feature KD",
    "kd_logits": "kd: logits KD",
    "kd_logits_feature": "kd: logits + feature KD",
    "kd_fa": "kd: logits + FeatureAlignment (non-linear)",
    "kd_at": "kd: logits + AT (every stage)",
    "kd_afd": "kd: logits + AFD (every block)",
    "kd_rtk": "kd: logits + RTK (every block)",
    "kd_skd": "kd: SKD, linear alignment at every stage, no logits",
    "kd_dlkd": "kd: DLKD (4 rotated views)",
    "kd_reffakd": "kd: ReffAKD soft-label table (no teacher net)",
    "torch_kd": "PyTorch eager KD loop",
}
# Configurations that run a teacher network each step (the 0.9x target).
LIVE_TEACHER = set(KD_CONFIGS) - {"kd_reffakd"}


# Configurations.


def make_data(batch_size, steps, input_shape, num_classes, seed):
    """Standardised random images and labels: throughput does not depend on
    pixel values, and in-memory arrays work on every backend."""
    rng = np.random.default_rng(seed)
    n = batch_size * steps
    x = rng.normal(size=(n, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, size=(n,)).astype("int32")
    return x, y


def same_shape_layer(teacher, student, preferred=None):
    """The last zoo stage whose output shape is equal in both models."""
    names = [preferred] if preferred else kd.models.stage_layer_names(student)
    for name in reversed(names):
        try:
            t, s = teacher.get_layer(name), student.get_layer(name)
        except ValueError:
            continue
        if tuple(t.output.shape) == tuple(s.output.shape):
            return name
    return None


def _optimizer():
    # A small step keeps random-data runs finite (a NaN loss stops
    # kd.Distiller.fit); the update costs the same at any learning rate.
    return keras.optimizers.SGD(1e-4, momentum=0.9)


def _ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _kd_terms(config, teacher, student, feature_layer):
    """The `kd.Distiller` keyword arguments of one configuration, from
    `kd.presets` with the papers' defaults (SKD's stages at weight 1)."""
    presets = {
        "kd_logits": ("kd", {}),
        "kd_logits_feature": ("kd", {}),
        "kd_fa": ("fa", {}),
        "kd_at": ("kd+at", {}),
        "kd_afd": ("afd", {}),
        "kd_rtk": ("rtk", {}),
        "kd_skd": ("skd", {"skd_weight": 1.0}),
        "kd_dlkd": ("dlkd", {}),
    }
    if config not in presets:
        raise ValueError(f"Unknown configuration '{config}'.")
    name, overrides = presets[config]
    if name != "dlkd":  # DLKD has no logits KD term.
        overrides = {"kd_temperature": TEMPERATURE, **overrides}
    kwargs = kd.presets.build(name, teacher, student, **overrides)
    if config == "kd_logits_feature":
        kwargs["distillation_losses"].append(
            kd.losses.FeatureDistillation(feature_layer, feature_layer)
        )
        kwargs["distillation_loss_weights"].append(0.9)
    return kwargs


# Row timers; `use_clock` (throughput.run_benchmark's `clock=`) picks one.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def use_clock(clock):
    """Makes every runner time with `CLOCKS[clock]` ('wall' or 'cpu'), or
    with `clock` itself when it is a callable (a fake clock in tests; the
    GPU suite's time budget reads the same clock, `now`)."""
    if callable(clock):
        _clock[0] = clock
        return
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {list(CLOCKS)}, got {clock!r}.")
    _clock[0] = CLOCKS[clock]


def now():
    """The time, in seconds, on the clock `use_clock` chose."""
    return _clock[0]()


class KerasRunner:
    """Times `fit` (training rows) or `predict` (the teacher row)."""

    def __init__(self, model, predict=False):
        self.model = model
        self.predict = predict

    def __call__(self, x, y, batch_size):
        start = now()
        if self.predict:
            self.model.predict(x, batch_size=batch_size, verbose=0)
        else:
            self.model.fit(
                x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0
            )
        return now() - start


def build_runner(config, teacher, make_student, feature_layer, num_classes):
    """A callable timing one pass over the data, or a skip reason (str)."""
    if config == "teacher_forward":
        return KerasRunner(teacher, predict=True)
    if config == "torch_kd":
        return build_torch_runner(teacher, make_student())
    student = make_student()
    if config == "student":
        model = student
    elif config.startswith("keras_"):
        losses = [keras.distillation.LogitsDistillation(TEMPERATURE)]
        if config == "keras_logits_feature":
            if feature_layer is None:
                return "no same-shape layer in teacher and student"
            losses.append(
                keras.distillation.FeatureDistillation(
                    "mse", feature_layer, feature_layer
                )
            )
        model = keras.distillation.Distiller(
            teacher, student, losses, [1.0] * len(losses), student_loss_weight=0.1
        )
    elif config == "kd_reffakd":
        rng = np.random.default_rng(0)
        similarity = np.eye(num_classes) + 0.1 * rng.random((num_classes, num_classes))
        table = kd.reffakd.soft_label_table(similarity)
        model = kd.Distiller(
            kd.SoftLabelTeacher(table),
            student,
            kd.losses.LogitsDistillation(TEMPERATURE),
            student_loss_weight=0.1,
        )
    else:
        if config == "kd_dlkd" and not hasattr(kd.losses, "DualLevelDistillation"):
            return "kd.losses.DualLevelDistillation is not in this version"
        if config == "kd_logits_feature" and feature_layer is None:
            return "no same-shape layer in teacher and student"
        model = kd.Distiller(
            teacher, student, **_kd_terms(config, teacher, student, feature_layer)
        )
    model.compile(optimizer=_optimizer(), loss=_ce())
    return KerasRunner(model)


# PyTorch.


def torch_installed():
    return torch_twins.torch_installed()


def build_torch_runner(teacher, student):
    """The PyTorch row's runner (timed with this module's clock)."""
    if not torch_installed():
        return "PyTorch is not installed"
    return torch_twins.build_torch_runner(
        teacher, student, clock=now, temperature=TEMPERATURE
    )
