"""`specialize`: SKD to a class subset, beside its baselines (§2)."""

import os
import time

import numpy as np

import keras_kd as kd
from keras_kd.cli import flags as cli_flags
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import build_student
from keras_kd.cli.common import load_data
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import run
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import train_phase
from keras_kd.cli.common import train_plain
from keras_kd.cli.methods import build_terms
from keras_kd.cli.methods import preset_hyperparameters
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
from keras_kd.cli.teachers import resolve_teachers
from keras_kd.cli.teachers import train_or_evaluate_teachers
from keras_kd.training import Data

_BASELINES = ("scratch", "finetune", "subset_kd")


def _task_data(data, cfg):
    """The class subset of `data` given by `--classes`, relabelled."""
    from keras_kd.data import class_subset

    names = data.info["class_names"]
    spec = FLAGS.classes or (
        ["3", "5", "8"]
        if FLAGS.dataset == "digits"
        else [str(i) for i in range(min(5, len(names)))]
    )
    classes = [int(c) if c.strip().isdigit() else c.strip() for c in spec]
    if cfg["protocol"] == "digits":
        default_images = 10
    else:
        default_images = 0
    per_class = (
        FLAGS.images_per_class if FLAGS.images_per_class is not None else default_images
    )
    try:
        (x, y), mapping = class_subset(
            (data.x, data.y),
            classes,
            max_per_class=per_class or None,
            seed=FLAGS.seed,
            class_names=names,
        )
        (x_test, y_test), _ = class_subset(
            (data.x_test, data.y_test), classes, class_names=names
        )
    except ValueError as e:
        raise RecipeError(f"--classes={','.join(spec)}: {e}") from None
    if FLAGS.match_full_steps and per_class:
        x, y = repeat_to(x, y, int(np.isin(data.y, mapping.original_ids).sum()))
    task = Data(
        x,
        y,
        x_test,
        y_test,
        dict(
            data.info, num_classes=len(mapping.original_ids), class_names=mapping.names
        ),
        data.mean,
        data.std,
    )
    return task, mapping, per_class


def repeat_to(x, y, count):
    """`x` and `y` repeated in order and cut to `count` examples (each
    example `count // len(x)` or one more times): `repeat_to(x, y, 25)` of
    10 examples holds them 3, 3, 3, 3, 3, 2, 2, 2, 2, 2 times."""
    times = -(-count // len(x))
    return np.concatenate([x] * times)[:count], np.concatenate([y] * times)[:count]


def _baselines():
    """`--baselines`, checked."""
    baselines = [b.strip() for b in FLAGS.baselines if b.strip()]
    bad = [b for b in baselines if b not in _BASELINES]
    if bad:
        raise RecipeError(
            f"Unknown --baselines {bad}; choose from {', '.join(_BASELINES)}."
        )
    return baselines


class _Specialization:
    """One `specialize` run, shaped like `distill`'s: the constructor
    resolves the flags and builds every model (bad flags fail before
    anything is written), `train` runs the phases, `report` writes
    `results.json`."""

    def __init__(self):
        self.start = time.perf_counter()
        cfg, self.defaults = resolve_protocol()
        self.cfg = dict(cfg, train_limit=0)
        self.formats = check_export_flags()
        self.baselines = _baselines()
        self.seed = FLAGS.seed
        self.data = load_data(self.cfg)
        self.task, self.mapping, self.per_class = _task_data(self.data, self.cfg)
        self.spec = (FLAGS.teacher or self.defaults["teacher"])[0]
        self.teachers = resolve_teachers([self.spec], self.data, self.seed)
        self.teacher = self.teachers[0][1]
        classes = self.data.info["num_classes"]
        if num_outputs(self.teacher) != classes:
            raise RecipeError(
                f"--teacher={self.spec} has {num_outputs(self.teacher)} "
                f"outputs but --dataset={FLAGS.dataset} has {classes} "
                f"classes; the teacher covers every class of the dataset."
            )
        self.student_name = FLAGS.student or self.defaults["student"]
        self.lr = learning_rate(self.cfg, self.student_name, self.defaults)
        self.student = self._new_student()
        self._build_distillers()

    def _new_student(self):
        """A fresh student for the task (the same initial weights)."""
        return build_student(
            self.student_name,
            self.task.info["num_classes"],
            self.data.info["input_shape"],
            self.cfg,
            self.seed + 1,
            "the task",
        )

    def _build_distillers(self):
        """SKD's Distiller and the baselines' models."""
        # SKD's own weights: the flags, else the paper's (not the protocol's).
        kwargs = build_terms(
            "skd",
            [self.teacher],
            self.student,
            preset_hyperparameters(["skd"], self.defaults, protocol_weights=False),
            "SKD",
            self.cfg["epochs"],
        )
        self.terms = {
            term.name: (term, weight)
            for term, weight in zip(
                kwargs["distillation_losses"], kwargs["distillation_loss_weights"]
            )
        }
        augmentation = augmentation_layer(self.cfg, self.seed, self.data)
        self.host_augment = self.cfg["augment"] and not augmentation
        try:
            self.distiller = kd.Distiller(
                self.teacher, self.student, **kwargs, augmentation=augmentation
            )
            self.others = self._baseline_models(augmentation)
        except ValueError as e:
            raise RecipeError(f"SKD: {e}") from None

    def _baseline_models(self, augmentation):
        """`{"scratch": student, "subset_kd": Distiller}` as asked."""
        others = {}
        if "scratch" in self.baselines:
            others["scratch"] = self._new_student()
        if "subset_kd" in self.baselines:
            kd_temperature = FLAGS.kd_temperature or self.defaults["kd_temperature"]
            others["subset_kd"] = kd.skd.renormalised_logits_distiller(
                self.teacher,
                self._new_student(),
                self.mapping.original_ids,
                kd_temperature,
                augmentation=augmentation,
            )
        return others

    def train(self):
        """Writes `flags.json`; the teacher, the baselines, then SKD."""
        prepare_output_dir("specialize")
        print(
            f"Task: classes {self.mapping!r}, {len(self.task.x)} training "
            f"images ({self.per_class or 'all'} per class"
            f"{', repeated' if FLAGS.match_full_steps and self.per_class else ''}), "
            f"{len(self.task.x_test)} test."
        )
        print_config(
            self.cfg,
            self.lr,
            ["skd"],
            self.terms,
            1.0,
            self.data,
            self.task.x,
            self.student_name,
            [self.spec],
        )
        teacher_result = train_or_evaluate_teachers(
            self.teachers, self.data, self.cfg, self.defaults, self.seed
        )[0]
        entry = model_entry(self.teacher, self.spec, teacher_result)
        self.rows = [table_row("teacher (all classes)", entry)]
        self.models = {"teacher": entry}
        for name in self.baselines:
            self._add(name, self._train_baseline(name))
        self._add("skd", self._train_skd())

    def _add(self, name, entry):
        """Adds a trained model to the table and to `results.json`."""
        self.rows.append(table_row(name, entry))
        self.models[name] = entry

    def _train_baseline(self, name):
        """Trains the baseline `name` on the task; its `model_entry`."""
        task, cfg, lr, seed = self.task, self.cfg, self.lr, self.seed
        if name == "finetune":
            seed_all(seed + 2)
            model = kd.skd.finetune_model(self.teacher, task.info["num_classes"])
            result = train_plain(
                "finetune", model, task, task.x, task.y, cfg, lr, seed + 1
            )
            return model_entry(model, f"{self.spec} + new head", result)
        if name == "scratch":
            model = self.others[name]
            result = train_plain(
                "scratch", model, task, task.x, task.y, cfg, lr, seed + 1
            )
            return model_entry(model, self.student_name, result)
        result = train_phase(
            "subset_kd",
            self.others[name],
            task,
            task.x,
            task.y,
            cfg,
            lr,
            seed + 1,
            self.host_augment,
        )
        return model_entry(self.others[name].student, self.student_name, result)

    def _train_skd(self):
        """The SKD student (phase `skd`), saved; its `model_entry`."""
        task = self.task
        result = train_phase(
            "skd",
            self.distiller,
            task,
            task.x,
            task.y,
            self.cfg,
            self.lr,
            self.seed + 1,
            self.host_augment,
        )
        path = os.path.join(FLAGS.output_dir, "student.keras")
        self.student.save(path)
        return model_entry(self.student, self.student_name, result, saved_to=path)

    def report(self):
        """Prints the table, exports the student, writes `results.json`."""
        mapping, task = self.mapping, self.task
        print_table(
            self.rows,
            f"{FLAGS.dataset}: specialised to "
            f"{len(mapping.original_ids)} classes "
            f"{mapping.names}, test accuracy on them (the "
            f"teacher's row: all classes)",
        )
        export_report = export_student(self.student, task, self.formats)
        results = {
            "recipe": "specialize",
            "flags": run_flags("specialize"),
            "resolved": dict(
                self.cfg,
                lr=self.lr,
                skd_weights={k: w for k, (_, w) in self.terms.items()},
            ),
            "task": {
                "classes": mapping.original_ids.tolist(),
                "names": mapping.names,
                "train_images": int(len(task.x)),
                "images_per_class": self.per_class,
                "match_full_steps": FLAGS.match_full_steps,
                "test_images": int(len(task.x_test)),
                "normalization": {"mean": self.data.mean, "std": self.data.std},
            },
            "models": self.models,
            "export": export_report,
            "wall_seconds": time.perf_counter() - self.start,
        }
        write_results(results)
        return results


def specialize_main(argv):
    """SKD: specialise to a class subset with feature-level KD only."""
    del argv
    specialization = _Specialization()
    specialization.train()
    return specialization.report()


def main():
    """`keras-kd-specialize`: SKD to a class subset, beside baselines."""
    cli_flags.define_common_flags(default_output_dir="runs/specialize")
    cli_flags.define_teacher_flags()
    cli_flags.define_student_flags(baseline=False)
    cli_flags.define_kd_flags()
    cli_flags.define_skd_flags()
    cli_flags.define_specialize_flags()
    run(specialize_main)
