"""The teachers of a recipe: `--teacher` specs, built or loaded, trained or
evaluated, and their weights."""

import os

from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import resolve_model
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import learning_rate


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
    MobileNetV2 student under the CIFAR protocol), not the student's, for
    `cfg["teacher_epochs"]` with the schedule of those epochs."""
    results = []
    teacher_cfg = dict(
        cfg,
        epochs=cfg["teacher_epochs"],
        lr_decay_epochs=cfg["teacher_lr_decay_epochs"],
    )
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


def teacher_weights(count):
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


def teacher_specs(methods, defaults):
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


def check_teacher_outputs(teachers, methods, num_classes):
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
