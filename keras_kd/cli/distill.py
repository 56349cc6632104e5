"""`distill` and `reffakd`: teacher(s), the student alone and distilled."""

import ast
import os
import time

import numpy as np

import keras_kd as kd
from keras_kd import presets
from keras_kd.cli import flags as cli_flags
from keras_kd.cli import teacher_cache
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import run
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import build_student
from keras_kd.cli.common import load_data
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import resolve_model
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import student_data
from keras_kd.cli.common import train_phase
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import learning_rate
from keras_kd.cli.protocols import resolve_protocol
from keras_kd.cli.report import check_export_flags
from keras_kd.cli.report import export_student
from keras_kd.cli.report import model_size
from keras_kd.cli.report import print_config
from keras_kd.cli.report import print_table
from keras_kd.cli.run_dir import prepare_output_dir
from keras_kd.cli.run_dir import run_flags
from keras_kd.cli.run_dir import write_results


def parse_methods(spec):
    """`'kd+fa'` → `['kd', 'fa']` (a registered joined name such as `kd+ls`
    stays whole), checked against the registry."""
    names = [n.strip() for n in spec.split("+")]
    unknown = [n for n in names if n not in presets.names()
               and not any(n in joined.split("+") for joined in presets.names()
                           if "+" in joined)]
    if unknown or not spec.strip():
        raise RecipeError(
            f"Unknown method {'+'.join(unknown) or spec!r} in "
            f"--method={spec}. Available: {', '.join(presets.names())}, or "
            f"several joined by '+', e.g. --method=kd+fa.")
    try:
        parsed = presets.parse(spec)
    except ValueError as e:
        if "Unknown preset" in str(e):
            raise RecipeError(
                f"Unknown method in --method={spec}: {e}") from None
        raise RecipeError(f"--method={spec}: {e}") from None
    return [preset.name for preset in parsed]


def _resolve_teachers(specs, data, cfg, seed):
    """Builds or loads the teachers; returns `[(spec, model, loaded)]`."""
    teachers = []
    for i, spec in enumerate(specs):
        seed_all(seed + 100 + i)
        model, loaded = resolve_model(
            spec, data.info["num_classes"], data.info["input_shape"],
            "teacher", 0.0)  # Decayed by the optimizer.
        teachers.append((spec, model, loaded))
    return teachers


def _train_or_evaluate_teachers(teachers, data, cfg, defaults, seed):
    """Trains the zoo teachers (phase `teacher_<i>`), evaluates loaded ones.

    Each zoo teacher trains at its own protocol learning rate
    (`learning_rate(cfg, its name)`: 0.05 for a ResNet teacher of a
    MobileNetV2 student under the CIFAR protocol), not the student's."""
    import keras

    results = []
    teacher_cfg = dict(cfg, epochs=cfg["teacher_epochs"])
    for i, (spec, model, loaded) in enumerate(teachers):
        if loaded:
            model.compile(
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(
                    name="accuracy")])
            _, accuracy = model.evaluate(
                data.normalize(data.x_test), data.y_test, batch_size=256,
                verbose=0)
            results.append({"last_epoch_test_accuracy": accuracy,
                            "best_epoch_test_accuracy": accuracy,
                            "best_epoch": None, "loaded_from": spec})
            continue
        model.trainable = True
        lr = learning_rate(cfg, spec, defaults)
        result = train_plain(f"teacher_{i}", model, data, data.x, data.y,
                             teacher_cfg, lr, seed + 100 + i)
        result["lr"] = lr
        model.trainable = False
        path = os.path.join(FLAGS.output_dir, f"teacher_{i}.keras")
        model.save(path)
        result["saved_to"] = path
        results.append(result)
    return results


def _ce_weight(method_names, defaults):
    """`--ce_weight`, else the protocol's for kd alone, else `None` (the
    preset's: 1 - reffakd_alpha for reffakd, 1 for the others)."""
    if FLAGS.ce_weight is not None:
        if FLAGS.ce_weight < 0:
            raise RecipeError(f"--ce_weight must be >= 0, got "
                              f"{FLAGS.ce_weight}.")
        return FLAGS.ce_weight
    if method_names == ["kd"]:
        return defaults["kd_ce_weight"]
    return None


# Hinton KD's paper values: the protocol's KD temperature and weight replace
# a preset's default only where the default is this (kd, fa, afd, rtk,
# ctkd), not where a preset has its own (kd+ls's weight 9).
_HINTON_KD = {"kd_temperature": 4.0, "kd_weight": 0.9}


def preset_hyperparameters(method_names, defaults, protocol_weights=True):
    """The presets' hyper-parameters set by flags or by the protocol.

    A preset's hyper-parameter named like a method flag takes the flag's
    value (training flags such as `--momentum` are not read); an unset
    `kd_temperature`/`kd_weight` at Hinton KD's default, or `<name>_weight`
    with `protocol_weights`, takes the protocol's; then `--hparam` values;
    else the preset's default.
    """
    values = {}
    for name in method_names:
        for key, default in presets.get(name).defaults.items():
            value = (None if key in cli_flags.TRAINING_FLAGS
                     else getattr(FLAGS, key, None))
            if value is None and key in _HINTON_KD and (
                    _HINTON_KD[key] == default):
                value = defaults[key]
            elif value is None and protocol_weights and key.endswith(
                    "_weight"):
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
                f"--hparam={spec}: expected name=value, e.g. "
                f"--hparam=beta=6.")
        if name in values:
            raise RecipeError(f"--hparam={name} is given twice.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if not text.isidentifier():
                raise RecipeError(
                    f"--hparam={spec}: {text!r} is not a Python literal "
                    f"(number, True/False, None, list, 'string') or a bare "
                    f"word.") from None
            value = {"true": True, "false": False, "none": None}.get(
                text.lower(), text)
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
            f"training image and is set from the data; drop it.")
    hyperparameters["num_data"] = num_examples


def build_terms(spec, teachers, student, hyperparameters, context):
    """`kd.presets.build`, its errors as RecipeErrors naming `context`."""
    if getattr(FLAGS, "hparam", None):
        context += " " + " ".join(f"--hparam={h}" for h in FLAGS.hparam)
    try:
        return presets.build(spec, teachers, student, **hyperparameters)
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{context}: {e}") from None


def _teacher_weights(count):
    if not FLAGS.teacher_weights:
        return None
    try:
        weights = [float(w) for w in FLAGS.teacher_weights]
    except ValueError:
        raise RecipeError(f"--teacher_weights must be numbers, got "
                          f"{FLAGS.teacher_weights}.") from None
    if len(weights) != count or min(weights) <= 0:
        raise RecipeError(
            f"--teacher_weights needs one positive weight per teacher "
            f"({count}), got {weights}.")
    return weights


def _soft_label_table(data, x, y, cfg, seed):
    """ReffAKD: trains the autoencoder and returns `(table, cost)`."""
    from keras_kd import reffakd

    seed_all(seed + 200)
    counts = np.bincount(y, minlength=data.info["num_classes"])
    per_class = min(FLAGS.reffakd_per_class, int(counts.min()))
    if per_class < 2:
        raise RecipeError(
            f"ReffAKD samples images of every class, but the student's "
            f"training data has {int(counts.min())} image(s) of some class; "
            f"raise --train_limit.")
    if per_class < FLAGS.reffakd_per_class:
        print(f"[reffakd] sampling {per_class} images per class (the "
              f"smallest class has {int(counts.min())}).")
    epochs = FLAGS.reffakd_ae_epochs or (
        30 if cfg["protocol"] == "digits" else 200)  # The paper: 200.
    unit = x.astype("float32") / 255.0
    # The autoencoder halves H and W three times: zero-pad other sizes
    # (e.g. 28x28) to multiples of 8; it only yields class similarities.
    pad = [(0, 0)] + [(0, -n % 8) for n in unit.shape[1:3]] + [(0, 0)]
    unit = np.pad(unit, pad)
    val = max(1, len(unit) // 10)
    autoencoder, cost = reffakd.train_autoencoder(
        unit[val:], unit[:val], epochs=epochs,
        batch_size=min(128, len(unit) - val))
    similarity = reffakd.class_similarity(
        autoencoder.encoder, unit, y, per_class=per_class,
        diagonal_boost=FLAGS.reffakd_diagonal, seed=seed)
    cost.update({"epochs": epochs, "per_class": per_class})
    return reffakd.soft_label_table(similarity), cost


def distill_main(argv, recipe="distill"):
    """Teacher(s), the student alone and the distilled student; a table."""
    del argv
    start = time.perf_counter()
    cfg, defaults = resolve_protocol()
    method_names = parse_methods(FLAGS.method)
    methods = [presets.get(name) for name in method_names]
    formats = check_export_flags()
    soft_labels = methods[0].teacher == "soft_labels"
    seed = FLAGS.seed

    data = load_data(cfg)
    num_classes = data.info["num_classes"]
    input_shape = data.info["input_shape"]
    x, y = student_data(data, cfg)

    # Teachers.
    min_teachers = max(m.min_teachers for m in methods)
    specs = FLAGS.teacher or list(defaults["teacher"])
    if soft_labels:
        if FLAGS.teacher:
            raise RecipeError("--method=reffakd uses no teacher network; "
                              "drop --teacher.")
        specs = []
    elif len(specs) < min_teachers:
        if FLAGS.teacher:
            raise RecipeError(
                f"--method={FLAGS.method} needs at least {min_teachers} "
                f"teachers; give them as --teacher=a,b.")
        specs = specs * min_teachers
    teachers = _resolve_teachers(specs, data, cfg, seed)
    for spec, model, _ in teachers:
        classes = num_outputs(model)
        if classes != num_classes and not all(
                m.num_classes_may_differ for m in methods):
            raise RecipeError(
                f"--teacher={spec} has {classes} outputs but "
                f"--dataset={FLAGS.dataset} has {num_classes} classes.")
    student_name = FLAGS.student or defaults["student"]
    lr = learning_rate(cfg, student_name, defaults)

    def new_student():
        return build_student(student_name, num_classes, input_shape, cfg,
                             seed + 1, "the dataset")

    student = new_student()
    baseline = new_student() if FLAGS.baseline else None

    # The terms and the Distiller, built now so that bad combinations fail
    # before anything is written.
    kd_temperature = FLAGS.kd_temperature or defaults["kd_temperature"]
    kd_weight = (defaults["kd_weight"] if FLAGS.kd_weight is None
                 else FLAGS.kd_weight)
    hyperparameters = preset_hyperparameters(method_names, defaults)
    data_hyperparameters(method_names, hyperparameters, len(x))
    # DLKD augments its four rotated views itself (one flip per image, a
    # crop per view, black padding), so the distilled phase then gets no
    # host or device crop/flip: docs/methods.md §11, DLKD.
    views_augment = cfg["augment"] and "dlkd" in method_names
    if views_augment:
        hyperparameters.update(
            dlkd_crop_padding=4,
            dlkd_pad_value=[float(v) for v in -data.mean / data.std])
    ce_weight = _ce_weight(method_names, defaults)
    if ce_weight is not None:
        hyperparameters["student_loss_weight"] = ce_weight
    if soft_labels:
        uniform = np.full((num_classes, num_classes), 1.0 / num_classes)
        teacher_models = [kd.SoftLabelTeacher(uniform)]
    else:
        teacher_models = [m for _, m, _ in teachers]
    kwargs = build_terms("+".join(method_names), teacher_models, student,
                         hyperparameters, f"--method={FLAGS.method}")
    ce_weight = kwargs["student_loss_weight"]
    terms = {term.name: (term, weight) for term, weight in zip(
        kwargs["distillation_losses"], kwargs["distillation_loss_weights"])}
    teacher_weights = _teacher_weights(len(teachers))
    augmentation = None if views_augment else augmentation_layer(cfg, seed)

    def build_distiller(teacher_models):
        try:
            return kd.Distiller(teacher_models, student, **kwargs,
                                teacher_weights=teacher_weights,
                                augmentation=augmentation)
        except ValueError as e:
            raise RecipeError(f"--method={FLAGS.method}: {e}") from None

    distiller = build_distiller(teacher_models)
    cache = getattr(FLAGS, "teacher_cache", None)
    if cache:
        teacher_cache.check_cacheable(kwargs["distillation_losses"],
                                      soft_labels)
        teacher_cache.check_record(
            cache, (x, y), teacher_cache.cache_augmentation(cfg, data), cfg,
            seed, len(teachers))

    prepare_output_dir(recipe)
    print_config(cfg, lr, method_names, terms, ce_weight, data, x,
                  student_name, specs)

    teacher_results = _train_or_evaluate_teachers(teachers, data, cfg,
                                                  defaults, seed)
    reffakd_cost = None
    if soft_labels:
        table, reffakd_cost = _soft_label_table(data, x, y, cfg, seed)
        np.save(os.path.join(FLAGS.output_dir, "soft_labels.npy"), table)
        # Rebuilt with the real table; the terms are built already.
        distiller = build_distiller(kd.SoftLabelTeacher(table))

    batches, cache_report = None, None
    if cache:
        reused = teacher_cache.record_teachers(
            teacher_models, (x, y), teacher_cache.cache_augmentation(cfg, data),
            cfg, seed, cache)
        distiller = build_distiller(teacher_cache.recorded_teachers(cache))
        batches = teacher_cache.replay_batches(x, y, cfg, cache)
        cache_report = {"path": cache, "reused": reused}

    baseline_result = None
    if baseline is not None:
        baseline_result = train_plain("student_alone", baseline, data, x, y,
                                      cfg, lr, seed + 1)
    distilled_result = train_phase(
        "distilled", distiller, data, x, y, cfg, lr, seed + 1,
        host_augment=cfg["augment"] and not augmentation
        and not views_augment, batches=batches)
    student_path = os.path.join(FLAGS.output_dir, "student.keras")
    student.save(student_path)

    rows = []
    models_report = {}
    for i, ((spec, model, _), result) in enumerate(zip(teachers,
                                                       teacher_results)):
        params, size = model_size(model)
        rows.append((f"teacher_{i}", spec, result, params, size))
        models_report[f"teacher_{i}"] = dict(result, arch=spec,
                                             params=params, size_bytes=size)
    if baseline_result is not None:
        params, size = model_size(baseline)
        rows.append(("student alone", student_name, baseline_result, params,
                     size))
        models_report["student_alone"] = dict(
            baseline_result, arch=student_name, params=params,
            size_bytes=size)
    params, size = model_size(student)
    rows.append((f"student + {FLAGS.method}", student_name, distilled_result,
                 params, size))
    models_report["distilled"] = dict(distilled_result, arch=student_name,
                                      params=params, size_bytes=size,
                                      saved_to=student_path)
    print_table([(n, r, a, p, s) for n, a, r, p, s in rows],
                f"{FLAGS.dataset}: test accuracy, {len(x)} student training "
                f"images, method {FLAGS.method}")
    if reffakd_cost is not None:
        print(f"ReffAKD autoencoder: {reffakd_cost['params']:,} parameters, "
              f"trained in {reffakd_cost['train_seconds']:.1f} s (the "
              f"teacher's place).")
    export_report = export_student(student, data, formats)
    results = {
        "recipe": recipe,
        "flags": run_flags(recipe),
        "resolved": dict(cfg, lr=lr, method=method_names,
                         ce_weight=ce_weight, kd_temperature=kd_temperature,
                         kd_weight=kd_weight, hyperparameters=hyperparameters,
                         distilled_host_augment=bool(
                             cfg["augment"] and not augmentation
                             and not views_augment),
                         dlkd_views={k: hyperparameters[k] for k in (
                             "dlkd_crop_padding", "dlkd_pad_value")
                             if k in hyperparameters},
                         term_weights={k: w for k, (_, w) in terms.items()}),
        "dataset": {**data.info, "train_images": int(len(data.x)),
                    "student_train_images": int(len(x)),
                    "test_images": int(len(data.x_test)),
                    "normalization": {"mean": data.mean, "std": data.std}},
        "models": models_report,
        "reffakd_autoencoder": reffakd_cost,
        "teacher_cache": cache_report,
        "export": export_report,
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(results)
    return results



def define_flags(default_method="kd", default_output_dir="runs/distill"):
    """The flags of `distill` (and, with other defaults, `reffakd`)."""
    cli_flags.define_common_flags(default_output_dir=default_output_dir)
    cli_flags.define_teacher_flags()
    cli_flags.define_student_flags()
    cli_flags.define_method_flags(default_method=default_method)
    cli_flags.define_teacher_cache_flags()


def main():
    """`keras-kd-distill`: distil, beside the student alone; TFLite export."""
    define_flags()
    cli_flags.set_flag_defaults(export=["tflite"])
    run(distill_main)


def reffakd_main():
    """`keras-kd-reffakd`: ReffAKD, soft labels without a teacher network."""
    define_flags(default_method="reffakd", default_output_dir="runs/reffakd")
    run(lambda argv: distill_main(argv, recipe="reffakd"))
