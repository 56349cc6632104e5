"""`--method`, `--hparam` and the method flags → `kd.presets` arguments."""

import ast

from keras_kd import presets
from keras_kd.cli import flags as cli_flags
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError


def resolve_method(spec):
    """`--method`, e.g. `'kd+fa'`, → its `Preset`s (`kd.presets.parse`; a
    registered joined name such as `kd+ls` stays whole)."""
    try:
        return presets.parse(spec)
    except ValueError as e:
        raise _method_error(spec, e) from None


def _method_error(spec, error):
    """The RecipeError for `presets.parse(spec)`'s `error`."""
    parts = set(presets.names()).union(*(name.split("+") for name in presets.names()))
    unknown = [n.strip() for n in spec.split("+") if n.strip() not in parts]
    if unknown or not spec.strip():
        return RecipeError(
            f"Unknown method {'+'.join(unknown) or spec!r} in "
            f"--method={spec}. Available: {', '.join(presets.names())}, or "
            f"several joined by '+', e.g. --method=kd+fa."
        )
    if "Unknown preset" in str(error):
        return RecipeError(f"Unknown method in --method={spec}: {error}")
    return RecipeError(f"--method={spec}: {error}")


def ce_weight(method_names, defaults):
    """`--ce_weight`, else the protocol's for kd alone, else `None` (the
    preset's: 1 - reffakd_alpha for reffakd, 1 for the others)."""
    if FLAGS.ce_weight is not None:
        if FLAGS.ce_weight < 0:
            raise RecipeError(f"--ce_weight must be >= 0, got {FLAGS.ce_weight}.")
        return FLAGS.ce_weight
    if method_names == ["kd"]:
        return defaults["kd_ce_weight"]
    return None


def preset_hyperparameters(method_names, defaults, protocol_weights=True):
    """The presets' hyper-parameters set by flags or by the protocol.

    A preset's hyper-parameter named like a method flag takes the flag's
    value (training flags such as `--momentum` are not read); an unset
    `kd_temperature`/`kd_weight` at Hinton KD's default (the `kd` preset's:
    so in kd, fa, afd, rtk, ctkd, not kd+ls's weight 9), or `<name>_weight`
    with `protocol_weights`, takes the protocol's; then `--hparam` values;
    else the preset's default.
    """
    hinton = presets.get("kd").defaults
    values = {}
    for name in method_names:
        for key, default in presets.get(name).defaults.items():
            value = (
                None if key in cli_flags.TRAINING_FLAGS else getattr(FLAGS, key, None)
            )
            if value is None and key in hinton and hinton[key] == default:
                value = defaults[key]
            elif value is None and protocol_weights and key.endswith("_weight"):
                value = defaults.get("term_weights", {}).get(key[:-7])
            if value is not None:
                values[key] = value
    values.update(parse_hparams(getattr(FLAGS, "hparam", None) or []))
    return values


def parse_hparams(specs):
    """`["beta=6", "schedule=linear"]` → `{"beta": 6, "schedule": "linear"}`.

    Values are Python literals (numbers, True/False, None, lists, quoted
    strings); a bare word is a string (`true`/`false`/`none` in any case
    are the bool and None).
    """
    values = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name.isidentifier() or not text:
            raise RecipeError(
                f"--hparam={spec}: expected name=value, e.g. --hparam=beta=6."
            )
        if name in values:
            raise RecipeError(f"--hparam={name} is given twice.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if not text.isidentifier():
                raise RecipeError(
                    f"--hparam={spec}: {text!r} is not a Python literal "
                    f"(number, True/False, None, list, 'string') or a bare "
                    f"word."
                ) from None
            value = {"true": True, "false": False, "none": None}.get(text.lower(), text)
        values[name] = value
    return values


def data_hyperparameters(method_names, hyperparameters, num_examples):
    """Sets `num_data` (CRD's memory bank rows) to the training-set size."""
    if not any("num_data" in presets.get(n).defaults for n in method_names):
        return
    given = hyperparameters.get("num_data")
    if given is not None and given != num_examples:
        raise RecipeError(
            f"--hparam=num_data={given}, but the student trains on "
            f"{num_examples} images: num_data is one memory row per "
            f"training image and is set from the data; drop it."
        )
    hyperparameters["num_data"] = num_examples


def build_terms(spec, teachers, student, hyperparameters, context, epochs):
    """`kd.presets.build` for a run of `epochs` (its epoch schedules
    scaled), its errors as RecipeErrors naming `context`."""
    if getattr(FLAGS, "hparam", None):
        context += " " + " ".join(f"--hparam={h}" for h in FLAGS.hparam)
    try:
        return presets.build(spec, teachers, student, epochs=epochs, **hyperparameters)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{context}: {e}") from None
