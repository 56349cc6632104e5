"""The accuracy part of `benchmarks/gpu_suite.py`: CIFAR-10 training runs.

`accuracy_part(args, log)` trains a teacher, then the students (alone,
keras.distillation KD, kd KD, kd KD+FA) on the same batches
(`kd.data.EpochBatches`, host crop+flip) and returns each run's test
accuracy and wall time; `accuracy_targets` checks `ACCURACY_TARGET`
against them. `synthetic_jpegs` writes the small JPEG folder `--smoke`
trains on when no CIFAR-10 copy is there.

No TensorFlow: JPEGs are decoded with Pillow where TensorFlow is absent;
imported by gpu_suite.py, which sets the JAX backend first.
"""

import io
import os
import tempfile
import time

import keras
import numpy as np
import throughput_rows as tp

import keras_kd as kd

ACCURACY_TARGET = {"run": "kd_kd", "accuracy": 0.888, "wall_s": 65.0}


def synthetic_jpegs(folder, train, test, seed=0):
    """A CIFAR-shaped npz folder in the JPEG format (class = colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 32, 32, 3)) + 20 * y[:, None, None, None]
        blobs = []
        for image in x.astype("uint8"):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buffer.getvalue(), "uint8"))
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("int64")
        np.savez(
            os.path.join(folder, f"{split}.npz"),
            jpeg=np.concatenate(blobs),
            offsets=offsets,
            y=y,
        )
    return folder


def _compile(model, args, epochs, steps):
    warmup = min(steps, epochs * steps // 2)  # One epoch, linear.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, epochs * steps - warmup, warmup_target=args.lr, warmup_steps=warmup
    )
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=tp._ce(),
        steps_per_execution=min(steps, args.steps_per_execution),
    )


def fit_and_test(name, model, student, data, args, epochs, log):
    """Fits `model` for `epochs`; returns the student's test accuracy and
    the fit's wall time (compilation included)."""
    x, y, x_test, y_test, mean, std = data
    train = kd.data.EpochBatches(
        x,
        y,
        args.batch_size,
        seed=args.seed,
        augment=True,
        normalize=(mean, std),
        drop_remainder=True,
        workers=args.workers,
    )
    _compile(model, args, epochs, len(train))
    timer = kd.callbacks.TrainTimer()
    start = time.perf_counter()
    model.fit(train, epochs=epochs, callbacks=[timer], verbose=0)
    wall = time.perf_counter() - start
    logits = student.predict(
        ((x_test - mean) / std).astype("float32"), batch_size=1024, verbose=0
    )
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    log(f"[accuracy] {name}: {100 * accuracy:.2f} % in {wall:.1f} s")
    return {
        "run": name,
        "test_accuracy": accuracy,
        "wall_s": wall,
        "train_s": timer.seconds,
        "epochs": epochs,
        "images_per_s": len(x) * epochs / timer.seconds,
    }


def accuracy_part(args, log):
    data_dir = args.data_dir
    if args.smoke and not os.path.isdir(data_dir):
        data_dir = synthetic_jpegs(
            tempfile.mkdtemp(), args.train_limit, args.test_limit
        )
    start = time.perf_counter()
    (x, y), (x_test, y_test), _ = kd.data.load(f"npz:{data_dir}")
    decode_s = time.perf_counter() - start
    if args.train_limit:
        x, y = x[: args.train_limit], y[: args.train_limit]
    if args.test_limit:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    mean, std = kd.data.channel_stats(x)
    data = (x, y, x_test.astype("float32"), y_test, mean, std)
    keras.mixed_precision.set_global_policy(args.accuracy_policy)
    model = lambda name, seed: (  # noqa: E731
        keras.utils.set_random_seed(seed),
        kd.models.get(name, num_classes=10, input_shape=(32, 32, 3), weight_decay=5e-4),
    )[1]
    teacher = model(args.teacher, args.seed)
    runs = [
        fit_and_test("teacher", teacher, teacher, data, args, args.teacher_epochs, log)
    ]
    teacher.trainable = False
    for name in ("student", "keras_kd", "kd_kd", "kd_fa"):
        student = model(args.student, args.seed + 1)
        if name == "student":
            trained = student
        elif name == "keras_kd":
            trained = keras.distillation.Distiller(
                teacher,
                student,
                [
                    keras.distillation.LogitsDistillation(
                        4.0, loss=keras.losses.KLDivergence()
                    )
                ],
                [1.0],
                student_loss_weight=0.1,
            )
        else:
            trained = kd.Distiller(
                teacher,
                student,
                **kd.presets.build(
                    "kd" if name == "kd_kd" else "fa",
                    teacher,
                    student,
                    epochs=args.student_epochs,
                ),
            )
        try:  # A diverging run is recorded, not fatal.
            runs.append(
                fit_and_test(
                    name, trained, student, data, args, args.student_epochs, log
                )
            )
        except FloatingPointError as e:
            log(f"[accuracy] {name} failed: {e}")
            runs.append({"run": name, "failed": str(e)[:300]})
    decoder = "tf.io" if kd.data.tensorflow_available() else "Pillow"
    return {
        "runs": runs,
        "data": f"npz:{data_dir}",
        "jpeg_decoder": decoder,
        "decode_s": decode_s,
        "train_images": int(len(x)),
        "test_images": int(len(x_test)),
        "policy": args.accuracy_policy,
    }


def accuracy_targets(runs):
    """The accuracy targets (`ACCURACY_TARGET`) of `accuracy_part`'s runs; a
    failed run meets neither."""
    goal = ACCURACY_TARGET
    run = {r["run"]: r for r in runs}[goal["run"]]
    if "failed" in run:
        run = {"test_accuracy": 0.0, "wall_s": float("inf")}
    return [
        {
            "name": f"{goal['run']} test accuracy",
            "goal": goal["accuracy"],
            "ratio": run["test_accuracy"],
            "met": run["test_accuracy"] >= goal["accuracy"],
        },
        {
            "name": f"{goal['run']} wall s",
            "goal": goal["wall_s"],
            "ratio": run["wall_s"],
            "at_most": True,
            "met": run["wall_s"] <= goal["wall_s"],
        },
    ]
