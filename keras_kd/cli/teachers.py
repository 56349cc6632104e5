"""The teachers of a recipe: `--teacher` specs, built or loaded, trained or
evaluated, their inputs and their weights.

A teacher loaded from a file gets the inputs it was trained on
(`--teacher_inputs`, README "Recipes"): raw 0..255 pixels when its graph
starts with a `Rescaling`/`Normalization` layer (auto), resized to its input
size; a loaded teacher near chance on the test images stops the run unless
`--allow_weak_teacher`.

Example (what `recipes/distill.py --teacher=t.keras` does):

```python
teachers = resolve_teachers(["t.keras"], data, seed, any_size=True)
inputs = teacher_preprocessing(teachers, data)
results = evaluate_loaded_teachers(teachers, data, inputs)
check_weak_teachers(teachers, results, data)
```
"""

import os

import keras

from keras_kd import model_outputs
from keras_kd import teacher_inputs
from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError
from keras_kd.cli.common import num_outputs
from keras_kd.cli.common import resolve_model
from keras_kd.cli.common import seed_all
from keras_kd.cli.common import train_plain
from keras_kd.cli.protocols import learning_rate

# A loaded teacher whose test accuracy is below chance (1 / classes) plus
# this stops the run (`--allow_weak_teacher` goes on).
WEAK_TEACHER_MARGIN = 0.05


def resolve_teachers(specs, data, seed, any_size=False):
    """Builds or loads the teachers; returns `[(spec, model, loaded)]`.
    With `any_size`, a loaded teacher may take another image size."""
    teachers = []
    for i, spec in enumerate(specs):
        seed_all(seed + 100 + i)
        model, loaded = resolve_model(
            spec,
            data.info["num_classes"],
            data.info["input_shape"],
            "teacher",
            0.0,  # Decayed by the optimizer.
            any_size=any_size,
        )
        teachers.append((spec, model, loaded))
    return teachers


def teacher_preprocessing(teachers, data):
    """The Distiller's `teacher_preprocessing`: one transform per teacher
    (None: the student's inputs). A loaded teacher fed raw pixels gets the
    inverse of the student's normalisation, one of another size a
    `Resizing`; zoo teachers train on the student's inputs."""
    transforms = []
    for i, (_, model, loaded) in enumerate(teachers):
        if not loaded:
            transforms.append(None)
            continue
        raw = input_convention(model) == "raw"
        steps = [teacher_inputs.unnormalize(data.mean, data.std)] if raw else []
        size = tuple((model_outputs.input_shape(model) or (None,) * 3)[1:3])
        if None not in size and size != tuple(data.info["input_shape"][:2]):
            steps.append(keras.layers.Resizing(*size))
        name = f"teacher_{i}_{'raw' if raw else 'normalized'}_inputs"
        if steps:
            transforms.append(keras.Sequential(steps, name=name))
        elif teacher_inputs.leading_scaling(model) is not None:
            # Normalised inputs on purpose: no Distiller warning.
            transforms.append(keras.layers.Identity(name=name))
        else:
            transforms.append(None)
    return transforms


def describe_inputs(teachers, data):
    """Per teacher, what it is fed: `{"convention": "raw"|"normalized",
    "size": [h, w]}` for a loaded one, None for a zoo one."""
    described = []
    for _, model, loaded in teachers:
        shape = (model_outputs.input_shape(model) if loaded else None) or ()
        size = list(shape[1:3])
        if len(size) != 2 or None in size:  # Any size: the images'.
            size = list(data.info["input_shape"][:2])
        described.append(
            {"convention": input_convention(model), "size": size} if loaded else None
        )
    return described


def print_inputs(fed):
    """One line per loaded teacher: what it is fed (`describe_inputs`)."""
    words = {"raw": "raw 0..255 pixels", "normalized": "normalised inputs"}
    for i, described in enumerate(fed):
        if described is not None:
            print(
                f"teacher_{i} is fed {words[described['convention']]} at "
                f"{described['size'][0]}x{described['size'][1]} "
                f"(--teacher_inputs={FLAGS.teacher_inputs})."
            )


def input_convention(model):
    """`--teacher_inputs` for a loaded teacher, `auto` resolved: "raw" when
    its graph starts with a `Rescaling`/`Normalization` layer."""
    if FLAGS.teacher_inputs != "auto":
        return FLAGS.teacher_inputs
    scaled = teacher_inputs.leading_scaling(model) is not None
    return "raw" if scaled else "normalized"


def evaluate_loaded_teachers(teachers, data, transforms):
    """`{index: result}`: each loaded teacher's test accuracy, measured on
    what it is fed in distillation (its `transforms` entry applied)."""
    return {
        i: _evaluate_teacher(spec, model, data, transform)
        for i, ((spec, model, loaded), transform) in enumerate(
            zip(teachers, transforms)
        )
        if loaded
    }


def check_weak_teachers(teachers, results, data):
    """Stops the run when a loaded teacher scores less than
    `WEAK_TEACHER_MARGIN` above chance, naming the likely causes and
    `--allow_weak_teacher`."""
    if FLAGS.allow_weak_teacher:
        return
    classes = data.info["num_classes"]
    chance = 1.0 / classes
    for i, result in sorted(results.items()):
        spec, model, _ = teachers[i]
        accuracy = result["last_epoch_test_accuracy"]
        if accuracy >= chance + WEAK_TEACHER_MARGIN:
            continue
        raw = input_convention(model) == "raw"
        fed = "raw 0..255 pixels" if raw else "the student's normalised inputs"
        other = "normalized" if raw else "raw"
        raise RecipeError(
            f"--teacher={spec} scores {accuracy:.1%} on the "
            f"{len(data.y_test)} test images, less than "
            f"{WEAK_TEACHER_MARGIN * 100:g} points above chance ({chance:.1%} "
            f"for {classes} classes): distilling from it would teach noise. "
            f"Likely causes: "
            f"its input convention (it was fed {fed}, "
            f"--teacher_inputs={FLAGS.teacher_inputs}; try "
            f"--teacher_inputs={other}), its class order (output k must be "
            f"the dataset's label k), or its label count ({num_outputs(model)} "
            f"outputs for {classes} classes). Pass --allow_weak_teacher to "
            f"distil from it anyway."
        )


def train_or_evaluate_teachers(teachers, data, cfg, defaults, seed, evaluated=None):
    """Trains the zoo teachers (phase `teacher_<i>`), evaluates loaded ones
    (unless `evaluated`, from `evaluate_loaded_teachers`, has them).

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
            done = (evaluated or {}).get(i)
            results.append(done or _evaluate_teacher(spec, model, data, None))
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


def _evaluate_teacher(spec, model, data, transform):
    """The test accuracy of a loaded teacher fed the student's test inputs
    through `transform` (its Distiller preprocessing), as a phase result."""
    evaluated = teacher_inputs.with_preprocessing(
        model, transform, data.info["input_shape"]
    )
    from_logits = model_outputs.softmax_layer(model) is None
    evaluated.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    _, accuracy = evaluated.evaluate(
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
