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
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import build_student
from keras_kd.cli.common import load_data
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import resolve_model
from keras_kd.cli.common import run
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import student_data
from keras_kd.cli.common import train_phase
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import learning_rate
from keras_kd.cli.protocols import resolve_protocol
from keras_kd.cli.report import check_export_flags
from keras_kd.cli.report import export_student
from keras_kd.cli.report import model_entry
from keras_kd.cli.report import print_config
from keras_kd.cli.report import print_table
from keras_kd.cli.report import table_row
from keras_kd.cli.run_dir import prepare_output_dir
from keras_kd.cli.run_dir import run_flags
from keras_kd.cli.run_dir import write_results


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


def resolve_teachers(specs, data, seed):
    """Builds or loads the teachers; returns `[(spec, model, loaded)]`."""
    teachers = []
    for i, spec in enumerate(specs):
        seed_all(seed + 100 + i)
        model, loaded = resolve_model(
            spec, data.info["num_classes"], data.info["input_shape"], "teacher", 0.0
        )  # Decayed by the optimizer.
        teachers.append((spec, model, loaded))
    return teachers


def train_or_evaluate_teachers(teachers, data, cfg, defaults, seed):
    """Trains the zoo teachers (phase `teacher_<i>`), evaluates loaded ones.

    Each zoo teacher trains at its own protocol learning rate
    (`learning_rate(cfg, its name)`: 0.05 for a ResNet teacher of a
    MobileNetV2 student under the CIFAR protocol), not the student's."""
    results = []
    teacher_cfg = dict(cfg, epochs=cfg["teacher_epochs"])
    for i, (spec, model, loaded) in enumerate(teachers):
        if loaded:
            results.append(_evaluate_teacher(spec, model, data))
            continue
        model.trainable = True
        lr = learning_rate(cfg, spec, defaults)
        result = train_plain(
            f"teacher_{i}", model, data, data.x, data.y, teacher_cfg, lr, seed + 100 + i
        )
        result["lr"] = lr
        model.trainable = False
        path = os.path.join(FLAGS.output_dir, f"teacher_{i}.keras")
        model.save(path)
        result["saved_to"] = path
        results.append(result)
    return results


def _evaluate_teacher(spec, model, data):
    """The test accuracy of a loaded teacher, as a phase result."""
    import keras

    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    _, accuracy = model.evaluate(
        data.normalize(data.x_test), data.y_test, batch_size=256, verbose=0
    )
    return {
        "last_epoch_test_accuracy": accuracy,
        "best_epoch_test_accuracy": accuracy,
        "best_epoch": None,
        "loaded_from": spec,
    }


def _ce_weight(method_names, defaults):
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
        raise RecipeError(
            f"--teacher_weights must be numbers, got {FLAGS.teacher_weights}."
        ) from None
    if len(weights) != count or min(weights) <= 0:
        raise RecipeError(
            f"--teacher_weights needs one positive weight per teacher "
            f"({count}), got {weights}."
        )
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
            f"raise --train_limit."
        )
    if per_class < FLAGS.reffakd_per_class:
        print(
            f"[reffakd] sampling {per_class} images per class (the "
            f"smallest class has {int(counts.min())})."
        )
    epochs = FLAGS.reffakd_ae_epochs or (
        30 if cfg["protocol"] == "digits" else 200
    )  # The paper: 200.
    unit = x.astype("float32") / 255.0
    # The autoencoder halves H and W three times: zero-pad other sizes
    # (e.g. 28x28) to multiples of 8; it only yields class similarities.
    pad = [(0, 0)] + [(0, -n % 8) for n in unit.shape[1:3]] + [(0, 0)]
    unit = np.pad(unit, pad)
    val = max(1, len(unit) // 10)
    autoencoder, cost = reffakd.train_autoencoder(
        unit[val:], unit[:val], epochs=epochs, batch_size=min(128, len(unit) - val)
    )
    similarity = reffakd.class_similarity(
        autoencoder.encoder,
        unit,
        y,
        per_class=per_class,
        diagonal_boost=FLAGS.reffakd_diagonal,
        seed=seed,
    )
    cost.update({"epochs": epochs, "per_class": per_class})
    return reffakd.soft_label_table(similarity), cost


def _teacher_specs(methods, defaults):
    """`--teacher` (else the protocol's, repeated up to the methods' minimum
    count); none for soft labels."""
    min_teachers = max(m.min_teachers for m in methods)
    specs = FLAGS.teacher or list(defaults["teacher"])
    if methods[0].teacher == "soft_labels":
        if FLAGS.teacher:
            raise RecipeError(
                "--method=reffakd uses no teacher network; drop --teacher."
            )
        return []
    if len(specs) < min_teachers:
        if FLAGS.teacher:
            raise RecipeError(
                f"--method={FLAGS.method} needs at least {min_teachers} "
                f"teachers; give them as --teacher=a,b."
            )
        specs = specs * min_teachers
    return specs


def _check_teacher_outputs(teachers, methods, num_classes):
    """Refuses a teacher with other classes unless every method allows it."""
    for spec, model, _ in teachers:
        classes = num_outputs(model)
        if classes != num_classes and not all(
            m.num_classes_may_differ for m in methods
        ):
            raise RecipeError(
                f"--teacher={spec} has {classes} outputs but "
                f"--dataset={FLAGS.dataset} has {num_classes} classes."
            )


def _first_value(hyperparameters, key):
    """`key` in the first preset's `hyperparameters` that has it, or None."""
    return next(
        (values[key] for values in hyperparameters.values() if key in values), None
    )


class _Distillation:
    """One `distill` run, shaped like mdistiller's trainer.

    The constructor resolves the flags and builds the teachers, the
    students, the terms and the Distiller, so that bad flags fail before
    anything is written; `train` runs the phases (teachers, soft labels or
    the teacher cache, the student alone, the distilled student); `report`
    prints the table, exports the student and writes `results.json`.
    """

    def __init__(self, recipe):
        self.start = time.perf_counter()
        self.recipe = recipe
        self.cfg, self.defaults = resolve_protocol()
        self.methods = resolve_method(FLAGS.method)
        self.method_names = [m.name for m in self.methods]
        self.formats = check_export_flags()
        self.soft_labels = self.methods[0].teacher == "soft_labels"
        self.seed = FLAGS.seed
        self.data = load_data(self.cfg)
        self.x, self.y = student_data(self.data, self.cfg)
        self.specs = _teacher_specs(self.methods, self.defaults)
        self.teachers = resolve_teachers(self.specs, self.data, self.seed)
        _check_teacher_outputs(
            self.teachers, self.methods, self.data.info["num_classes"]
        )
        self.student_name = FLAGS.student or self.defaults["student"]
        self.lr = learning_rate(self.cfg, self.student_name, self.defaults)
        self.student = self._new_student()
        self.baseline = self._new_student() if FLAGS.baseline else None
        self._build_terms()
        self._build_distiller()

    def _new_student(self):
        """A fresh student (the same initial weights each call)."""
        return build_student(
            self.student_name,
            self.data.info["num_classes"],
            self.data.info["input_shape"],
            self.cfg,
            self.seed + 1,
            "the dataset",
        )

    def _build_terms(self):
        """The presets' terms with the hyper-parameters of flags, protocol
        and `--hparam`; records the values each preset is built with."""
        names = self.method_names
        hyperparameters = preset_hyperparameters(names, self.defaults)
        data_hyperparameters(names, hyperparameters, len(self.x))
        # DLKD augments its four rotated views itself (one flip per image, a
        # crop per view, black padding), so the distilled phase then gets no
        # host or device crop/flip: docs/methods.md §11, DLKD.
        self.views_augment = self.cfg["augment"] and "dlkd" in names
        if self.views_augment:
            hyperparameters.update(
                dlkd_crop_padding=4,
                dlkd_pad_value=[float(v) for v in -self.data.mean / self.data.std],
            )
        ce_weight = _ce_weight(names, self.defaults)
        if ce_weight is not None:
            hyperparameters["student_loss_weight"] = ce_weight
        if self.soft_labels:
            num_classes = self.data.info["num_classes"]
            uniform = np.full((num_classes, num_classes), 1.0 / num_classes)
            self.teacher_models = [kd.SoftLabelTeacher(uniform)]
        else:
            self.teacher_models = [m for _, m, _ in self.teachers]
        self.kwargs = build_terms(
            "+".join(names),
            self.teacher_models,
            self.student,
            hyperparameters,
            f"--method={FLAGS.method}",
        )
        self.hyperparameters = hyperparameters
        self.used_hyperparameters = {
            m.name: m.hyperparameters(
                self.teacher_models, self.student, hyperparameters
            )
            for m in self.methods
        }
        self.terms = {
            term.name: (term, weight)
            for term, weight in zip(
                self.kwargs["distillation_losses"],
                self.kwargs["distillation_loss_weights"],
            )
        }

    def _build_distiller(self):
        """The Distiller; with `--teacher_cache`, the record checked."""
        self.teacher_weights = _teacher_weights(len(self.teachers))
        self.augmentation = (
            None if self.views_augment else augmentation_layer(self.cfg, self.seed)
        )
        self.host_augment = (
            self.cfg["augment"] and not self.augmentation and not self.views_augment
        )
        self.distiller = self._distiller(self.teacher_models)
        self.cache = getattr(FLAGS, "teacher_cache", None)
        if self.cache:
            teacher_cache.check_cacheable(
                self.kwargs["distillation_losses"], self.soft_labels
            )
            teacher_cache.check_record(
                self.cache,
                (self.x, self.y),
                teacher_cache.cache_augmentation(self.cfg, self.data),
                self.cfg,
                self.seed,
                len(self.teachers),
            )

    def _distiller(self, teachers):
        """A `kd.Distiller` of the student from `teachers` and the terms."""
        try:
            return kd.Distiller(
                teachers,
                self.student,
                **self.kwargs,
                teacher_weights=self.teacher_weights,
                augmentation=self.augmentation,
            )
        except ValueError as e:
            raise RecipeError(f"--method={FLAGS.method}: {e}") from None

    def train(self):
        """Writes `flags.json`, then runs every phase (each resumable)."""
        prepare_output_dir(self.recipe)
        print_config(
            self.cfg,
            self.lr,
            self.method_names,
            self.terms,
            self.kwargs["student_loss_weight"],
            self.data,
            self.x,
            self.student_name,
            self.specs,
        )
        self.teacher_results = train_or_evaluate_teachers(
            self.teachers, self.data, self.cfg, self.defaults, self.seed
        )
        self.reffakd_cost = self._fit_soft_labels() if self.soft_labels else None
        batches, self.cache_report = (
            self._replay_cache() if self.cache else (None, None)
        )
        self.baseline_result = self._train_baseline()
        self.distilled_result = self._distil(batches)

    def _fit_soft_labels(self):
        """ReffAKD: the Distiller gets the trained soft-label table."""
        table, cost = _soft_label_table(self.data, self.x, self.y, self.cfg, self.seed)
        np.save(os.path.join(FLAGS.output_dir, "soft_labels.npy"), table)
        # Rebuilt with the real table; the terms are built already.
        self.distiller = self._distiller(kd.SoftLabelTeacher(table))
        return cost

    def _replay_cache(self):
        """Records the teachers' targets (unless reused); the Distiller then
        reads them. Returns `(batches, report)`."""
        reused = teacher_cache.record_teachers(
            self.teacher_models,
            (self.x, self.y),
            teacher_cache.cache_augmentation(self.cfg, self.data),
            self.cfg,
            self.seed,
            self.cache,
        )
        self.distiller = self._distiller(teacher_cache.recorded_teachers(self.cache))
        batches = teacher_cache.replay_batches(self.x, self.y, self.cfg, self.cache)
        return batches, {"path": self.cache, "reused": reused}

    def _train_baseline(self):
        """The student alone (phase `student_alone`), unless --nobaseline."""
        if self.baseline is None:
            return None
        return train_plain(
            "student_alone",
            self.baseline,
            self.data,
            self.x,
            self.y,
            self.cfg,
            self.lr,
            self.seed + 1,
        )

    def _distil(self, batches):
        """The distilled student (phase `distilled`), saved."""
        result = train_phase(
            "distilled",
            self.distiller,
            self.data,
            self.x,
            self.y,
            self.cfg,
            self.lr,
            self.seed + 1,
            host_augment=self.host_augment,
            batches=batches,
        )
        self.student_path = os.path.join(FLAGS.output_dir, "student.keras")
        self.student.save(self.student_path)
        return result

    def report(self):
        """Prints the table, exports the student, writes `results.json`."""
        models = self._models()
        print_table(
            [table_row(label, entry) for label, entry in models.values()],
            f"{FLAGS.dataset}: test accuracy, {len(self.x)} student "
            f"training images, method {FLAGS.method}",
        )
        if self.reffakd_cost is not None:
            print(
                f"ReffAKD autoencoder: {self.reffakd_cost['params']:,} "
                f"parameters, trained in "
                f"{self.reffakd_cost['train_seconds']:.1f} s (the "
                f"teacher's place)."
            )
        export_report = export_student(self.student, self.data, self.formats)
        results = {
            "recipe": self.recipe,
            "flags": run_flags(self.recipe),
            "resolved": self._resolved(),
            "dataset": self._dataset(),
            "models": {key: entry for key, (_, entry) in models.items()},
            "reffakd_autoencoder": self.reffakd_cost,
            "teacher_cache": self.cache_report,
            "export": export_report,
            "wall_seconds": time.perf_counter() - self.start,
        }
        write_results(results)
        return results

    def _models(self):
        """`{key: (table label, model_entry)}` of every model, in order."""
        models = {}
        for i, ((spec, model, _), result) in enumerate(
            zip(self.teachers, self.teacher_results)
        ):
            models[f"teacher_{i}"] = (f"teacher_{i}", model_entry(model, spec, result))
        if self.baseline_result is not None:
            models["student_alone"] = (
                "student alone",
                model_entry(self.baseline, self.student_name, self.baseline_result),
            )
        models["distilled"] = (
            f"student + {FLAGS.method}",
            model_entry(
                self.student,
                self.student_name,
                self.distilled_result,
                saved_to=self.student_path,
            ),
        )
        return models

    def _resolved(self):
        """The settings used: protocol, flags and `--hparam` applied.

        `hyperparameters` holds the values given to `kd.presets.build`,
        `method_hyperparameters` every value each preset was built with;
        `kd_temperature`/`kd_weight` are the first preset's that has them
        (None when no preset has).
        """
        used = self.used_hyperparameters
        return dict(
            self.cfg,
            lr=self.lr,
            method=self.method_names,
            ce_weight=self.kwargs["student_loss_weight"],
            kd_temperature=_first_value(used, "kd_temperature"),
            kd_weight=_first_value(used, "kd_weight"),
            hyperparameters=self.hyperparameters,
            method_hyperparameters=used,
            distilled_host_augment=bool(self.host_augment),
            dlkd_views={
                k: self.hyperparameters[k]
                for k in ("dlkd_crop_padding", "dlkd_pad_value")
                if k in self.hyperparameters
            },
            term_weights={k: w for k, (_, w) in self.terms.items()},
        )

    def _dataset(self):
        """The dataset's description and the images each phase used."""
        data = self.data
        return {
            **data.info,
            "train_images": int(len(data.x)),
            "student_train_images": int(len(self.x)),
            "test_images": int(len(data.x_test)),
            "normalization": {"mean": data.mean, "std": data.std},
        }


def distill_main(argv, recipe="distill"):
    """Teacher(s), the student alone and the distilled student; a table."""
    del argv
    distillation = _Distillation(recipe)
    distillation.train()
    return distillation.report()


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
