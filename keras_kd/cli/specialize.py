"""`specialize`: SKD to a class subset, beside its baselines (§2)."""

import os
import time

import keras_kd as kd
from keras_kd.cli import flags as cli_flags
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import run
from keras_kd.cli.common import augmentation_layer
from keras_kd.cli.common import build_student
from keras_kd.cli.common import load_data
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import train_phase
from keras_kd.cli.common import train_plain
from keras_kd.cli.distill import _resolve_teachers
from keras_kd.cli.distill import build_terms
from keras_kd.cli.distill import preset_hyperparameters
from keras_kd.cli.distill import _train_or_evaluate_teachers
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
from keras_kd.training import Data


_BASELINES = ("scratch", "finetune", "subset_kd")


def _task_data(data, cfg):
    """The class subset of `data` given by `--classes`, relabelled."""
    from keras_kd.data import class_subset

    names = data.info["class_names"]
    spec = FLAGS.classes or (["3", "5", "8"] if FLAGS.dataset == "digits"
                             else [str(i) for i in range(min(5, len(names)))])
    classes = [int(c) if c.strip().isdigit() else c.strip() for c in spec]
    if cfg["protocol"] == "digits":
        default_images = 10
    else:
        default_images = 0
    per_class = (FLAGS.images_per_class if FLAGS.images_per_class is not None
                 else default_images)
    try:
        (x, y), mapping = class_subset(
            (data.x, data.y), classes, max_per_class=per_class or None,
            seed=FLAGS.seed, class_names=names)
        (x_test, y_test), _ = class_subset(
            (data.x_test, data.y_test), classes, class_names=names)
    except ValueError as e:
        raise RecipeError(f"--classes={','.join(spec)}: {e}") from None
    task = Data(x, y, x_test, y_test,
                dict(data.info, num_classes=len(mapping.original_ids),
                     class_names=mapping.names),
                data.mean, data.std)
    return task, mapping, per_class


def specialize_main(argv):
    """SKD: specialise to a class subset with feature-level KD only."""
    del argv
    start = time.perf_counter()
    cfg, defaults = resolve_protocol()
    cfg = dict(cfg, train_limit=0)
    formats = check_export_flags()
    baselines = [b.strip() for b in FLAGS.baselines if b.strip()]
    bad = [b for b in baselines if b not in _BASELINES]
    if bad:
        raise RecipeError(f"Unknown --baselines {bad}; choose from "
                          f"{', '.join(_BASELINES)}.")
    seed = FLAGS.seed

    data = load_data(cfg)
    task, mapping, per_class = _task_data(data, cfg)
    num_task = task.info["num_classes"]
    spec = (FLAGS.teacher or defaults["teacher"])[0]
    teachers = _resolve_teachers([spec], data, cfg, seed)
    teacher = teachers[0][1]
    if num_outputs(teacher) != data.info["num_classes"]:
        raise RecipeError(
            f"--teacher={spec} has {num_outputs(teacher)} outputs but "
            f"--dataset={FLAGS.dataset} has {data.info['num_classes']} "
            f"classes; the teacher covers every class of the dataset.")
    student_name = FLAGS.student or defaults["student"]
    lr = learning_rate(cfg, student_name, defaults)

    def new_student():
        return build_student(student_name, num_task, data.info["input_shape"],
                             cfg, seed + 1, "the task")

    student = new_student()
    # SKD's own weights: the flags, else the paper's (not the protocol's).
    kwargs = build_terms(
        "skd", [teacher], student,
        preset_hyperparameters(["skd"], defaults, protocol_weights=False),
        "SKD")
    terms = {term.name: (term, weight) for term, weight in zip(
        kwargs["distillation_losses"], kwargs["distillation_loss_weights"])}
    augmentation = augmentation_layer(cfg, seed)
    try:
        distiller = kd.Distiller(teacher, student, **kwargs,
                                 augmentation=augmentation)
        others = {}
        if "scratch" in baselines:
            others["scratch"] = new_student()
        if "subset_kd" in baselines:
            kd_temperature = FLAGS.kd_temperature or defaults[
                "kd_temperature"]
            others["subset_kd"] = kd.skd.renormalised_logits_distiller(
                teacher, new_student(), mapping.original_ids, kd_temperature,
                augmentation=augmentation)
    except ValueError as e:
        raise RecipeError(f"SKD: {e}") from None

    prepare_output_dir("specialize")
    print(f"Task: classes {mapping!r}, {len(task.x)} training images "
          f"({per_class or 'all'} per class), {len(task.x_test)} test.")
    print_config(cfg, lr, ["skd"], terms, 1.0,
                  data, task.x, student_name, [spec])
    teacher_result = _train_or_evaluate_teachers(teachers, data, cfg,
                                                 defaults, seed)[0]
    rows = []
    params, size = model_size(teacher)
    rows.append(("teacher (all classes)", teacher_result, spec, params, size))
    report = {"teacher": dict(teacher_result, arch=spec, params=params,
                              size_bytes=size)}
    host_augment = cfg["augment"] and not augmentation
    for name in baselines:
        if name == "finetune":
            seed_all(seed + 2)
            model = kd.skd.finetune_model(teacher, num_task)
            result = train_plain("finetune", model, task, task.x, task.y,
                                 cfg, lr, seed + 1)
            arch = f"{spec} + new head"
        elif name == "scratch":
            model = others[name]
            result = train_plain("scratch", model, task, task.x, task.y, cfg,
                                 lr, seed + 1)
            arch = student_name
        else:
            model = others[name].student
            result = train_phase("subset_kd", others[name], task, task.x,
                                 task.y, cfg, lr, seed + 1, host_augment)
            arch = student_name
        params, size = model_size(model)
        rows.append((name, result, arch, params, size))
        report[name] = dict(result, arch=arch, params=params, size_bytes=size)
    result = train_phase("skd", distiller, task, task.x, task.y, cfg, lr,
                         seed + 1, host_augment)
    path = os.path.join(FLAGS.output_dir, "student.keras")
    student.save(path)
    params, size = model_size(student)
    rows.append(("skd", result, student_name, params, size))
    report["skd"] = dict(result, arch=student_name, params=params,
                         size_bytes=size, saved_to=path)
    print_table(rows, f"{FLAGS.dataset}: specialised to "
                      f"{len(mapping.original_ids)} classes "
                      f"{mapping.names}, test accuracy on them (the "
                      f"teacher's row: all classes)")
    export_report = export_student(student, task, formats)
    results = {
        "recipe": "specialize", "flags": run_flags("specialize"),
        "resolved": dict(cfg, lr=lr, skd_weights={k: w for k, (_, w) in terms.items()}),
        "task": {"classes": mapping.original_ids.tolist(),
                 "names": mapping.names, "train_images": int(len(task.x)),
                 "test_images": int(len(task.x_test)),
                 "normalization": {"mean": data.mean, "std": data.std}},
        "models": report,
        "export": export_report,
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(results)
    return results



def main():
    """`keras-kd-specialize`: SKD to a class subset, beside baselines."""
    cli_flags.define_common_flags(default_output_dir="runs/specialize")
    cli_flags.define_teacher_flags()
    cli_flags.define_student_flags(baseline=False)
    cli_flags.define_kd_flags()
    cli_flags.define_skd_flags()
    cli_flags.define_specialize_flags()
    run(specialize_main)
