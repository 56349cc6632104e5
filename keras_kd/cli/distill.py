"""`distill` and `reffakd`: teacher(s), the student alone and distilled."""

import os
import time

import numpy as np

import keras_kd as kd
from keras_kd.cli import flags as cli_flags
from keras_kd.cli import methods as method_flags
from keras_kd.cli import soft_labels
from keras_kd.cli import teacher_cache
from keras_kd.cli import teachers as teachers_lib
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import build_student
from keras_kd.cli.common import load_data
from keras_kd.cli.common import run
from keras_kd.cli.common import student_data
from keras_kd.cli.common import train_phase
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import check_view_augmentation
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
        self.methods = method_flags.resolve_method(FLAGS.method)
        self.method_names = [m.name for m in self.methods]
        self.formats = check_export_flags()
        self.soft_labels = self.methods[0].teacher == "soft_labels"
        self.seed = FLAGS.seed
        self.data = load_data(self.cfg)
        self.x, self.y = student_data(self.data, self.cfg)
        self.specs = teachers_lib.teacher_specs(self.methods, self.defaults)
        self.teachers = teachers_lib.resolve_teachers(
            self.specs, self.data, self.seed, any_size=True
        )
        teachers_lib.check_teacher_outputs(
            self.teachers, self.methods, self.data.info["num_classes"]
        )
        self.teacher_inputs = teachers_lib.teacher_preprocessing(
            self.teachers, self.data
        )
        self.fed_to_teachers = teachers_lib.describe_inputs(self.teachers, self.data)
        self.student_name = FLAGS.student or self.defaults["student"]
        self.lr = learning_rate(self.cfg, self.student_name, self.defaults)
        self.student = self._new_student()
        self.baseline = self._new_student() if FLAGS.baseline else None
        self._build_terms()
        self._build_distiller()
        # Before anything is written: a loaded teacher near chance stops here.
        self.loaded_results = teachers_lib.evaluate_loaded_teachers(
            self.teachers, self.data, self.teacher_inputs
        )
        teachers_lib.check_weak_teachers(self.teachers, self.loaded_results, self.data)

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
        and `--hparam`, epoch schedules scaled to `--epochs`; records the
        values each preset is built with."""
        names = self.method_names
        check_view_augmentation(self.cfg, names)
        hyperparameters = method_flags.preset_hyperparameters(names, self.defaults)
        method_flags.data_hyperparameters(names, hyperparameters, len(self.x))
        # DLKD augments its four rotated views itself (one flip per image, a
        # crop per view, black padding), so the distilled phase then gets no
        # host or device crop/flip: docs/methods.md §11, DLKD.
        self.views_augment = self.cfg["augment"] and "dlkd" in names
        if self.views_augment:
            hyperparameters.update(
                dlkd_crop_padding=4,
                dlkd_pad_value=[float(v) for v in -self.data.mean / self.data.std],
            )
        # MLKD's strong view works on 8-bit pixels; under augmentation the
        # term crops and flips each view itself (docs/methods.md §7, MLKD).
        if {"mlkd", "mlkd+ls"} & set(names):
            for key, value in dict(
                mlkd_mean=[float(v) for v in self.data.mean],
                mlkd_std=[float(v) for v in self.data.std],
                mlkd_crop_padding=4 if self.cfg["augment"] else 0,
            ).items():
                hyperparameters.setdefault(key, value)
            self.views_augment = self.views_augment or self.cfg["augment"]
        ce_weight = method_flags.ce_weight(names, self.defaults)
        if ce_weight is not None:
            hyperparameters["student_loss_weight"] = ce_weight
        if self.soft_labels:
            num_classes = self.data.info["num_classes"]
            uniform = np.full((num_classes, num_classes), 1.0 / num_classes)
            self.teacher_models = [kd.SoftLabelTeacher(uniform)]
        else:
            self.teacher_models = [m for _, m, _ in self.teachers]
        self.kwargs = method_flags.build_terms(
            "+".join(names),
            self.teacher_models,
            self.student,
            hyperparameters,
            f"--method={FLAGS.method}",
            self.cfg["epochs"],
        )
        self.hyperparameters = hyperparameters
        self.used_hyperparameters = {
            m.name: m.hyperparameters(
                self.teacher_models, self.student, hyperparameters, self.cfg["epochs"]
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
        self.teacher_weights = teachers_lib.teacher_weights(len(self.teachers))
        self.augmentation = (
            None
            if self.views_augment
            else augmentation_layer(self.cfg, self.seed, self.data)
        )
        self.host_augment = (
            self.cfg["augment"] and not self.augmentation and not self.views_augment
        )
        self.distiller = self._distiller(
            self.teacher_models, self.teacher_inputs or None
        )
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

    def _distiller(self, teachers, preprocessing=None):
        """A `kd.Distiller` of the student from `teachers` (fed through
        `preprocessing`) and the terms."""
        try:
            return kd.Distiller(
                teachers,
                self.student,
                **self.kwargs,
                teacher_weights=self.teacher_weights,
                augmentation=self.augmentation,
                teacher_preprocessing=preprocessing,
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
        teachers_lib.print_inputs(self.fed_to_teachers)
        self.teacher_results = teachers_lib.train_or_evaluate_teachers(
            self.teachers,
            self.data,
            self.cfg,
            self.defaults,
            self.seed,
            evaluated=self.loaded_results,
        )
        self.reffakd_cost = self._fit_soft_labels() if self.soft_labels else None
        batches, self.cache_report = (
            self._replay_cache() if self.cache else (None, None)
        )
        self.baseline_result = self._train_baseline()
        self.distilled_result = self._distil(batches)

    def _fit_soft_labels(self):
        """ReffAKD: the Distiller gets the trained soft-label table."""
        table, cost = soft_labels.soft_label_table(
            self.data, self.x, self.y, self.cfg, self.seed
        )
        np.save(os.path.join(FLAGS.output_dir, "soft_labels.npy"), table)
        # Rebuilt with the real table; the terms are built already.
        self.distiller = self._distiller(kd.SoftLabelTeacher(table))
        return cost

    def _replay_cache(self):
        """Records the teachers' targets (unless reused); the Distiller then
        reads them. Returns `(batches, report)`."""
        shape = self.data.info["input_shape"]
        reused = teacher_cache.record_teachers(
            [
                kd.teacher_inputs.with_preprocessing(model, transform, shape)
                for model, transform in zip(self.teacher_models, self.teacher_inputs)
            ],
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
        """The student alone (phase `student_alone`, saved as
        `student_alone.keras`), unless --nobaseline."""
        if self.baseline is None:
            return None
        result = train_plain(
            "student_alone",
            self.baseline,
            self.data,
            self.x,
            self.y,
            self.cfg,
            self.lr,
            self.seed + 1,
        )
        self.baseline.save(os.path.join(FLAGS.output_dir, "student_alone.keras"))
        return result

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
                f"teacher's place)"
                + (
                    f", read from {self.reffakd_cost['reused_from']}."
                    if "reused_from" in self.reffakd_cost
                    else "."
                )
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
            teacher_inputs=self.fed_to_teachers,
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
    cli_flags.define_teacher_input_flags()
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
