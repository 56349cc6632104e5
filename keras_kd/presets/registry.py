"""The registry of distillation presets: named, documented term recipes.

A preset turns `(teachers, student, **hyperparameters)` into the terms of a
`kd.Distiller`, with the defaults of its paper. Each method family
registers its presets in its own module of `keras_kd.presets` with
`register`; `build` returns the keyword arguments of `kd.Distiller`.

Example:

```python
import keras_kd as kd

kwargs = kd.presets.build("kd+fa", teacher, student, fa_weight=10.0)
distiller = kd.Distiller(teacher, student, **kwargs)
```
"""

import dataclasses
import inspect
import numbers

_PRESETS = {}

# The epochs of the official protocol (RepDistiller, mdistiller, CTKD on
# CIFAR-100) that the presets' epoch-count defaults belong to.
OFFICIAL_EPOCHS = 240


@dataclasses.dataclass(frozen=True)
class Preset:
    """One registered preset (see `register` for the fields)."""

    name: str
    builder: object
    help: str
    reference: str
    defaults: dict
    student_loss_weight: object
    pair_defaults: dict
    teacher: str = "model"
    min_teachers: int = 1
    num_classes_may_differ: bool = False
    epoch_schedules: tuple = ()
    distiller_options: dict = dataclasses.field(default_factory=dict)

    def hyperparameters(self, teachers, student, overrides, epochs=None):
        """`defaults`, then the teacher/student pair's, then the epoch
        schedules scaled to `epochs` (see `build`), then `overrides`."""
        values = dict(self.defaults)
        teacher_name = getattr(teachers[0], "name", None) if teachers else None
        values.update(
            self.pair_defaults.get((teacher_name, getattr(student, "name", None)), {})
        )
        if epochs is not None:
            check_epochs(epochs)
            for key in self.epoch_schedules:
                values[key] = scale_schedule(values[key], epochs)
        values.update({k: v for k, v in overrides.items() if k in values})
        return values

    def ce_weight(self, values):
        """The student's cross-entropy weight when the preset runs alone."""
        if callable(self.student_loss_weight):
            return self.student_loss_weight(values)
        return self.student_loss_weight


def register(
    name,
    *,
    help,
    reference,
    defaults,
    student_loss_weight,
    pair_defaults=None,
    teacher="model",
    min_teachers=1,
    num_classes_may_differ=False,
    epoch_schedules=(),
    distiller_options=None,
):
    """Registers the decorated builder as the preset `name`.

    Args:
        name: the preset's name. '+' joins presets; a name containing one
            (e.g. `"kd+ls"`) is a preset of its own, looked up whole before
            its parts.
        help: one line: what the preset distils, and its paper.
        reference: where the defaults come from (paper, official code).
        defaults: every hyper-parameter of the builder with its paper value.
        student_loss_weight: the cross-entropy weight under
            `weighting="additive"` when the preset is used alone, or a
            function of the resolved hyper-parameters returning it.
        pair_defaults: `{(teacher_name, student_name): {hp: value}}`, the
            zoo pairs whose paper values differ from `defaults`.
        teacher: `"model"` (teacher networks) or `"soft_labels"` (a
            `kd.SoftLabelTeacher`, no teacher network).
        min_teachers: how many teachers the preset needs.
        num_classes_may_differ: whether the teacher may have other classes
            than the student.
        epoch_schedules: the hyper-parameters that count epochs of the
            official 240-epoch protocol (e.g. `("warmup_epochs",)`), which
            `build(..., epochs=E)` scales to E.
        distiller_options: other `kd.Distiller` arguments the official code
            implies (OFD: `{"teacher_batch_statistics": True}`), which
            `build` returns too.

    The builder takes `(teachers, student, **defaults)` (`teachers` a list)
    and returns `[(key, term, weight), ...]`; terms with the same key in a
    combination appear once.
    """
    if not name or any(not part for part in name.split("+")):
        raise ValueError(f"Invalid preset name '{name}'.")
    if teacher not in ("model", "soft_labels"):
        raise ValueError(
            f"`teacher` must be 'model' or 'soft_labels', got '{teacher}'."
        )

    _check_schedules(name, defaults, epoch_schedules)

    def decorator(builder):
        signature = list(inspect.signature(builder).parameters.values())[2:]
        parameters = [p.name for p in signature if p.kind != p.VAR_KEYWORD]
        takes_rest = len(parameters) < len(signature)  # A `**options`.
        if (
            set(parameters) - set(defaults)
            if takes_rest
            else sorted(parameters) != sorted(defaults)
        ):
            raise ValueError(
                f"Preset '{name}': the builder's hyper-parameters "
                f"{parameters} differ from `defaults` {sorted(defaults)}."
            )
        if name in _PRESETS:
            raise ValueError(f"Preset '{name}' is registered already.")
        _PRESETS[name] = Preset(
            name,
            builder,
            help,
            reference,
            dict(defaults),
            student_loss_weight,
            dict(pair_defaults or {}),
            teacher,
            min_teachers,
            num_classes_may_differ,
            tuple(epoch_schedules),
            dict(distiller_options or {}),
        )
        return builder

    return decorator


def _check_schedules(name, defaults, epoch_schedules):
    """`epoch_schedules` name integer defaults; no hyper-parameter is
    called `epochs` (`build`'s own argument)."""
    if "epochs" in defaults:
        raise ValueError(
            f"Preset '{name}': 'epochs' is `build`'s argument; name the "
            f"hyper-parameter otherwise (e.g. 'warmup_epochs')."
        )
    for key in epoch_schedules:
        value = defaults.get(key)
        if not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(
                f"Preset '{name}': epoch schedule '{key}' must be a "
                f"hyper-parameter with an integer default >= 0, got {value!r}."
            )


def check_epochs(epochs):
    """A ValueError unless `epochs` is a positive int."""
    if (
        isinstance(epochs, bool)
        or not isinstance(epochs, numbers.Integral)
        or epochs < 1
    ):
        raise ValueError(
            f"`epochs` must be a positive int, the run's training epochs "
            f"(e.g. epochs={OFFICIAL_EPOCHS}), got {epochs!r}; or leave it "
            f"None to keep the official schedules."
        )


def scale_schedule(value, epochs):
    """`value` epochs of the 240-epoch protocol for a run of `epochs`:
    `value · epochs / 240`, rounded half up, at least 1 (0 stays 0)."""
    if value == 0:
        return 0
    scaled = (2 * int(value) * int(epochs) + OFFICIAL_EPOCHS) // (2 * OFFICIAL_EPOCHS)
    return max(1, scaled)


def names():
    """The registered preset names, sorted."""
    return sorted(_PRESETS)


def get(name):
    """The `Preset` called `name`; a ValueError listing them if unknown."""
    if name not in _PRESETS:
        raise ValueError(
            f"Unknown preset '{name}'. Available: {', '.join(names())}; or "
            f"several joined by '+', e.g. 'kd+fa'."
        )
    return _PRESETS[name]


def parse(spec):
    """`'kd+fa'` → the `Preset`s, checked (known, no repeat, one teacher
    kind)."""
    tokens = [token.strip() for token in spec.split("+")]
    parts = []
    while tokens:  # Registered joined names (e.g. "kd+ls") win, longest first.
        for size in range(len(tokens), 0, -1):
            name = "+".join(tokens[:size])
            if size == 1 or name in _PRESETS:
                parts.append(name)
                tokens = tokens[size:]
                break
    presets = [get(part) for part in parts]
    if len(set(parts)) != len(parts):
        raise ValueError(f"'{spec}' repeats a preset.")
    if len({p.teacher for p in presets}) > 1:
        raise ValueError(
            f"'{spec}' mixes presets without a teacher network (soft labels) "
            f"and presets that need one; use them separately."
        )
    return presets


def build(spec, teacher, student, *, epochs=None, **hyperparameters):
    """The keyword arguments of `kd.Distiller` for the preset(s) `spec`.

    Args:
        spec: a preset name, or several joined by '+' (e.g. `"kd+fa"`).
        teacher: a keras.Model (or `kd.SoftLabelTeacher`), or a list.
        student: the student keras.Model.
        epochs: the run's training epochs, or None. The defaults that
            count epochs of the official 240-epoch protocol (DKD's and
            ReviewKD's `warmup_epochs` 20, CTKD's `lambda_epochs` 10) are
            scaled by `epochs / 240`, rounded, at least 1; None keeps them.
        **hyperparameters: overrides of the presets' defaults; each goes to
            every preset of `spec` that has it (an explicit schedule wins
            over the scaled one). `student_loss_weight` overrides the
            cross-entropy weight, and a preset's distiller option its value
            (e.g. `teacher_batch_statistics=False` for OFD).

    Example:

    ```python
    kd.presets.build("dkd", teacher, student, epochs=24)  # Warm-up 2 epochs.
    kd.presets.build("dkd", teacher, student, epochs=24, warmup_epochs=5)
    ```

    Returns:
        `{"distillation_losses", "distillation_loss_weights",
        "student_loss_weight", "weighting": "additive"}` and the presets'
        `distiller_options` (OFD: `"teacher_batch_statistics"`). The
        cross-entropy weight is the preset's own when `spec` names one
        preset, else 1 (CE + Σ w·term).
    """
    presets = parse(spec)
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    ce_weight = hyperparameters.pop("student_loss_weight", None)
    options = _distiller_options(spec, presets, hyperparameters)
    known = set().union(*(p.defaults for p in presets))
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise ValueError(
            f"Unknown hyper-parameter(s) {unknown} for preset '{spec}'. "
            f"Valid: {', '.join(sorted(known)) or 'none'}, "
            f"student_loss_weight."
        )
    if len(teachers) < max(p.min_teachers for p in presets):
        raise ValueError(
            f"Preset '{spec}' needs at least "
            f"{max(p.min_teachers for p in presets)} teachers, got "
            f"{len(teachers)}."
        )
    terms = {}
    for preset in presets:
        values = preset.hyperparameters(teachers, student, hyperparameters, epochs)
        for key, term, weight in preset.builder(teachers, student, **values):
            terms.setdefault(key, (term, weight))
        if ce_weight is None and len(presets) == 1:
            ce_weight = preset.ce_weight(values)
    if ce_weight is None:
        ce_weight = 1.0
    if ce_weight < 0:
        raise ValueError(f"`student_loss_weight` must be >= 0, got {ce_weight}.")
    return {
        "distillation_losses": [term for term, _ in terms.values()],
        "distillation_loss_weights": [float(w) for _, w in terms.values()],
        "student_loss_weight": float(ce_weight),
        "weighting": "additive",
        **options,
    }


def _distiller_options(spec, presets, overrides):
    """The presets' `distiller_options`, overridden by (and popped from)
    `overrides`; a ValueError where two presets disagree."""
    options = {}
    for preset in presets:
        for key, value in preset.distiller_options.items():
            if options.setdefault(key, value) != value and key not in overrides:
                raise ValueError(
                    f"'{spec}': its presets set the Distiller's `{key}` "
                    f"differently; give {key}=... to choose."
                )
    return {key: overrides.pop(key, value) for key, value in options.items()}
