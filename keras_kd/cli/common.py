"""What every recipe shares: errors, `run`, data and model resolution and the
training phases (over `keras_kd.training`)."""

import os
import sys
import warnings

import numpy as np
from absl import app
from absl import flags

from keras_kd import training
from keras_kd.training import Data

FLAGS = flags.FLAGS
# absl's own flags, not part of a run's identity.
ABSL_FLAGS = set(FLAGS)
# The tf.distribute strategy of the run (`--distribution`), set by `run`.
STRATEGY = [None]
# Whether TensorBoard logs are written (`check_optional_writers`).
TENSORBOARD = [True]


class RecipeError(ValueError):
    """A bad flag value or input, reported without a traceback."""


def run(main):
    """`absl.app.run(main)`, reporting `RecipeError`s as one-line errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def wrapped(argv):
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(
                f"Unexpected arguments {argv[1:]}; every option is a "
                f"--flag (see --helpfull)."
            )
        try:
            from keras_kd import distribute

            try:
                STRATEGY[0] = distribute.strategy_from_flag(FLAGS.distribution)
            except ValueError as e:
                raise RecipeError(f"--distribution: {e}") from None
            check_optional_writers()
            with distribute.scope(STRATEGY[0]):
                main(argv)
        except RecipeError as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)


def seed_all(seed):
    import keras

    keras.utils.set_random_seed(seed)


def load_data(cfg):
    """Loads `--dataset` and builds the normalisation, or a RecipeError.

    With the protocol's `image_size`, the training and test images are
    resized to it after the normalisation is measured on the originals (as
    ReffAKD's Fashion-MNIST notebooks measure 28x28 images and resize them
    to 32x32), and `info["input_shape"]` follows.
    """
    from keras_kd import data

    try:  # Refused before any data is read or model trained.
        data.resolve_input_pipeline(FLAGS.input_pipeline)
    except ValueError as e:
        raise RecipeError(f"--input_pipeline: {e}") from None
    try:
        (x, y), (x_test, y_test), info = data.load(FLAGS.dataset, FLAGS.data_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise RecipeError(f"--dataset={FLAGS.dataset}: {e}") from None
    except ImportError as e:
        raise RecipeError(
            f"--dataset={FLAGS.dataset} needs tensorflow-datasets: {e}"
        ) from None
    if len(x) == 0 or len(x_test) == 0:
        raise RecipeError(
            f"--dataset={FLAGS.dataset} has an empty train or test split."
        )
    if cfg["normalize"] == "channel":
        mean, std = data.channel_stats(x)
        std = np.maximum(std, 1e-3)
    else:
        mean = np.zeros(x.shape[-1], "float32")
        std = np.full(x.shape[-1], 255.0, "float32")
    if cfg.get("image_size"):
        x, x_test = (data.resize_images(v, cfg["image_size"]) for v in (x, x_test))
        info = dict(info, input_shape=x.shape[1:])
    return Data(x, y, x_test, y_test, info, mean, std)


def resolve_model(
    spec,
    num_classes,
    input_shape,
    role,
    weight_decay,
    dtype_policy="float32",
    any_size=False,
):
    """A zoo model (untrained) or a loaded `.keras` model, checked (with
    `any_size`, a loaded model may take another height and width).

    Returns `(model, loaded)`.
    """
    import keras

    from keras_kd import models

    if spec.endswith(".keras") or os.path.sep in spec:
        if not os.path.exists(spec):
            raise RecipeError(f"--{role}={spec}: no such file.")
        try:
            model = keras.models.load_model(spec, compile=False)
        except Exception as e:  # Keras raises many kinds here.
            raise RecipeError(
                f"--{role}={spec} is not a loadable .keras model: {e}"
            ) from None
        shape = (
            tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
        )
        if shape is not None and not _fits(shape, tuple(input_shape), any_size):
            resized = " (it is resized to its height and width)" if any_size else ""
            raise RecipeError(
                f"--{role}={spec} takes inputs of shape {shape}, but the "
                f"dataset's images are {tuple(input_shape)}{resized}."
            )
        return model, True
    if spec not in models.MODELS:
        raise RecipeError(
            f"Unknown model --{role}={spec}: use a path to a .keras file or "
            f"one of {', '.join(sorted(models.MODELS))}."
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        model = models.get(
            spec,
            num_classes=num_classes,
            input_shape=input_shape,
            weight_decay=weight_decay,
        )
    finally:
        keras.config.set_dtype_policy(previous)
    return model, False


def _fits(shape, image_shape, any_size):
    """Whether a model's input shape takes the images (any height and width
    with `any_size`, the channels the same)."""
    if not any_size:
        return shape == image_shape
    return len(shape) == len(image_shape) and shape[-1] == image_shape[-1]


def build_student(name, num_classes, input_shape, cfg, seed, what):
    """A fresh student (seeded by `seed`), checked against `num_classes`
    (the classes of `what`, e.g. "the dataset")."""
    seed_all(seed)
    # No kernel regularizers: the optimizer applies the coupled weight decay
    # to every trainable variable (keras_kd.optimizers).
    model, _ = resolve_model(
        name, num_classes, input_shape, "student", 0.0, FLAGS.mixed_precision
    )
    if num_outputs(model) != num_classes:
        raise RecipeError(
            f"--student={name} has {num_outputs(model)} outputs but {what} "
            f"has {num_classes} classes."
        )
    return model


def num_outputs(model):
    return int(model.outputs[0].shape[-1])


def student_data(data, cfg):
    limit = cfg["train_limit"]
    if limit:
        return data.x[:limit], data.y[:limit]
    return data.x, data.y


def augmentation_layer(cfg, seed, data):
    """The layer augmenting training batches on the device, or None (crop +
    flip on the host, or no augmentation).

    Crop + flip (`RandomCropFlip`) with `--augment_on_device`; a protocol's
    `"flip_rotation"` always (Keras layers, rotating in the corners the
    normalised black of `data`).
    """
    from keras_kd import data as kd_data

    if cfg["augment"] == "flip_rotation":
        black = -data.mean / data.std
        if np.ptp(black) > 1e-6:
            warnings.warn(
                f"flip_rotation fills rotated corners with one value for "
                f"every channel: {float(black.mean()):.3f}, the mean of the "
                f"channels' normalised black {black.tolist()}.",
                stacklevel=2,
            )
        return kd_data.flip_rotation(15, fill_value=black.mean(), seed=seed)
    if cfg["augment"] and FLAGS.augment_on_device:
        return kd_data.RandomCropFlip(padding=4, seed=seed)
    return None


def check_optional_writers():
    """Before any training: without TensorBoard, warn once and log CSV only
    (instead of failing in the middle of the first phase)."""
    TENSORBOARD[0] = training.tensorboard_available()
    if not TENSORBOARD[0]:
        print(f"Warning: {training.TENSORBOARD_MISSING}", file=sys.stderr)


def jit_compile():
    """`--jit_compile`, or by default XLA on JAX only (its uncompiled steps
    run op by op; TensorFlow's graphs and PyTorch run well without)."""
    import keras

    if FLAGS.jit_compile is not None:
        return FLAGS.jit_compile
    return keras.backend.backend() == "jax"


def train_phase(name, model, data, x, y, cfg, lr, seed, host_augment, batches=None):
    """`training.fit_resumable` with the run's flags, in `--output_dir`."""
    return training.fit_resumable(
        name,
        model,
        data,
        x,
        y,
        training.TrainConfig.from_dict(cfg, lr),
        FLAGS.output_dir,
        seed=seed,
        host_augment=host_augment,
        jit_compile=jit_compile(),
        verbose=FLAGS.verbose,
        tensorboard=TENSORBOARD[0],
        batches=batches,
        input_pipeline=FLAGS.input_pipeline,
        workers=FLAGS.input_workers,
    )


def train_plain(name, model, data, x, y, cfg, lr, seed):
    """Trains a model alone with cross-entropy (a teacher or a baseline)."""
    import keras

    augmentation = augmentation_layer(cfg, seed, data)
    trained = model
    if augmentation is not None:
        inputs = keras.Input(model.inputs[0].shape[1:])
        trained = keras.Model(
            inputs, model(augmentation(inputs)), name=f"{model.name}_augmented"
        )
    result = train_phase(
        name,
        trained,
        data,
        x,
        y,
        cfg,
        lr,
        seed,
        host_augment=cfg["augment"] and not augmentation,
    )
    return result
