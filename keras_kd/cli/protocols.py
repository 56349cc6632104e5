"""Training protocols: the value every unset training flag takes.

- `digits` (scikit-learn's digits, the offline main job): Adam 3e-3, 120
  epochs, batch 32, no weight decay or augmentation; the student trains on
  the first 100 training images (the teacher, 30 epochs, on all of them),
  KD at T=4 with `0.5·CE + 0.5·KD`; FitNets, AT, FA and SKD at one tenth of
  the CIFAR weights (measurements: benchmarks/README.md).
- `cifar` (docs/methods.md §6, any other dataset): SGD momentum 0.9, lr
  0.05 (0.01 for MobileNetV2 students), ×0.1 at 62.5/75/87.5% of the
  epochs (150/180/210 of 240), batch 64, coupled L2 weight decay 5e-4,
  random crop (4-pixel padding) and horizontal flip, per-channel
  normalisation; each method's paper weights (the presets' defaults).
- `fashion` (28x28 grayscale Fashion-MNIST, chosen by name): the `cifar`
  recipe at Fashion-MNIST's size: SGD momentum 0.9, lr 0.05 ×0.1 at 50/75%
  of 30 epochs, batch 128, L2 5e-4, crop (4-pixel padding) + flip,
  per-channel normalisation, fashion_cnn_large (30 epochs) →
  fashion_cnn_small on all training images, KD `0.1·CE + 0.9·KD` at T=4,
  the presets' weights.
- `reffakd_fashion` (ReffAKD's official Fashion-MNIST notebooks,
  docs/methods.md §5): images resized to 32x32 when loaded, SGD momentum
  0.9, lr 0.1 ×0.2 at 30/60/80% of 200 epochs (60/120/160), batch 128, L2
  5e-4, horizontal flip + rotation within ±15° (no crop), normalisation
  by the 28x28 images' mean and std, student `lenet5_bn`, teacher
  fashion_cnn_large for the same epochs, KD `0.1·CE + 0.9·KD` at T=5 (the
  ReffAKD flags' α and T).

A protocol's `teacher_epochs` of None means the student's epochs (`cifar`);
the step schedule's fractions apply to the teachers' own epochs, each step
multiplying the rate by `lr_decay_factor`. `augment` is False, True (crop +
flip) or the name of another augmentation (`"flip_rotation"`, which
`--augment` then turns on); `image_size`, when set, is the `(height,
width)` that every image is resized to when loaded (teachers, students and
the test split alike).

Example: `recipes/distill.py --protocol=fashion --dataset=npz:PATH`.
"""

from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import STRATEGY
from keras_kd.cli.common import RecipeError

# Protocols: the value every unset training flag takes.
PROTOCOLS = {
    "digits": {
        "optimizer": "adam",
        "lr": 3e-3,
        "momentum": 0.9,
        "epochs": 120,
        "teacher_epochs": 30,
        "batch_size": 32,
        "weight_decay": 0.0,
        "lr_decay_fractions": [],
        "lr_decay_factor": 0.1,
        "augment": False,
        "image_size": None,
        "normalize": "unit",
        "teacher": ["digits_cnn_large"],
        "student": "digits_cnn_small",
        "train_limit": 100,
        "kd_temperature": 4.0,
        "kd_weight": 0.5,
        "kd_ce_weight": 0.5,
        # docs/methods.md's CIFAR weights / 10 (see the module docstring).
        "term_weights": {"fitnets": 10.0, "at": 100.0, "fa": 10.0, "skd": 10.0},
    },
    "cifar": {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "epochs": 240,
        "teacher_epochs": None,  # --epochs.
        "batch_size": 64,
        "weight_decay": 5e-4,
        "lr_decay_fractions": [150 / 240, 180 / 240, 210 / 240],
        "lr_decay_factor": 0.1,
        "augment": True,
        "image_size": None,
        "normalize": "channel",
        "teacher": ["resnet32x4"],
        "student": "resnet8x4",
        "train_limit": 0,
        "kd_temperature": 4.0,
        "kd_weight": 0.9,
        "kd_ce_weight": 0.1,
    },
    "fashion": {
        "optimizer": "sgd",
        # Lengths chosen on a 5,000-image validation split (seed 0,
        # benchmarks/results/protocol_selection_fashion_2026-12-03.md):
        # the teacher plateaus after its second decay (92.6-92.8 % over
        # epochs 22-30); the student alone ends at 88.34 % after 20
        # epochs, 88.74 % after 30.
        "lr": 0.05,
        "momentum": 0.9,
        "epochs": 30,
        "teacher_epochs": 30,
        "batch_size": 128,
        "weight_decay": 5e-4,
        "lr_decay_fractions": [0.5, 0.75],
        "lr_decay_factor": 0.1,
        "augment": True,
        "image_size": None,
        "normalize": "channel",
        "teacher": ["fashion_cnn_large"],
        "student": "fashion_cnn_small",
        "train_limit": 0,
        "kd_temperature": 4.0,
        "kd_weight": 0.9,
        "kd_ce_weight": 0.1,
        # No term_weights: the presets' (paper, CIFAR) weights.
    },
    "reffakd_fashion": {
        # JEKimLab/ReffAKD, fashion_mnist/*.ipynb (cells: docs/methods.md
        # §5): tinySLG_distillation.ipynb cell 19, lenet_5_baseline.ipynb
        # cell 13, large_model_distillation.ipynb cell 18.
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "epochs": 200,
        "teacher_epochs": None,  # --epochs (the ResNet18 teacher's 200).
        "batch_size": 128,
        "weight_decay": 5e-4,
        "lr_decay_fractions": [60 / 200, 120 / 200, 160 / 200],
        "lr_decay_factor": 0.2,
        "augment": "flip_rotation",
        "image_size": (32, 32),
        "normalize": "channel",
        "teacher": ["fashion_cnn_large"],
        "student": "lenet5_bn",
        "train_limit": 0,
        # The notebooks search T in 20/10/5/1 and α in 0.1..0.9 for both
        # ReffAKD and KD; these are --reffakd_temperature/--reffakd_alpha's
        # defaults, so that KD and ReffAKD compare at one setting.
        "kd_temperature": 5.0,
        "kd_weight": 0.9,
        "kd_ce_weight": 0.1,
    },
}

# Augmentations besides crop + flip (`augment=True`) a protocol may name.
AUGMENTATIONS = ("flip_rotation",)


def resolve_protocol():
    """The protocol name and the settings of every training flag."""
    protocol = FLAGS.protocol
    if protocol == "auto":
        protocol = "digits" if FLAGS.dataset == "digits" else "cifar"
    defaults = PROTOCOLS[protocol]

    def pick(name):
        value = getattr(FLAGS, name, None)
        return defaults[name] if value is None else value

    cfg = {"protocol": protocol}
    for name in (
        "optimizer",
        "momentum",
        "epochs",
        "batch_size",
        "weight_decay",
        "augment",
        "train_limit",
    ):
        cfg[name] = pick(name)
    if cfg["augment"] is True and defaults["augment"] in AUGMENTATIONS:
        cfg["augment"] = defaults["augment"]  # --augment: the protocol's.
    cfg["teacher_epochs"] = _teacher_epochs(cfg["epochs"], defaults)
    cfg["normalize"] = defaults["normalize"]
    cfg["image_size"] = defaults["image_size"]
    cfg["lr_decay_factor"] = defaults["lr_decay_factor"]
    cfg["replicas"] = 1
    if STRATEGY[0] is not None:
        from keras_kd import distribute

        cfg["replicas"] = distribute.num_replicas(STRATEGY[0])
        cfg["batch_size"] *= cfg["replicas"]
    cfg["lr_decay_epochs"] = _decay_epochs(cfg["epochs"], defaults)
    cfg["teacher_lr_decay_epochs"] = _decay_epochs(cfg["teacher_epochs"], defaults)
    _check(cfg)
    return cfg, defaults


def _teacher_epochs(epochs, defaults):
    """`--teacher_epochs`, else the protocol's, else (None) `epochs`."""
    value = getattr(FLAGS, "teacher_epochs", None)
    if value is None:
        value = defaults["teacher_epochs"]
    return epochs if value is None else value


def _check(cfg):
    """Refuses out-of-range settings, e.g. `--epochs=0`."""
    for name, low in (
        ("epochs", 1),
        ("batch_size", 1),
        ("train_limit", 0),
        ("teacher_epochs", 0),
    ):
        if cfg[name] < low:
            raise RecipeError(f"--{name} must be at least {low}, got {cfg[name]}.")
    if cfg["weight_decay"] < 0:
        raise RecipeError(f"--weight_decay must be >= 0, got {cfg['weight_decay']}.")


def check_view_augmentation(cfg, method_names):
    """Refuses DLKD and MLKD, which crop and flip their views themselves,
    under a protocol augmenting otherwise (`reffakd_fashion`)."""
    views = sorted({"dlkd", "mlkd", "mlkd+ls"} & set(method_names))
    if views and cfg["augment"] in AUGMENTATIONS:
        raise RecipeError(
            f"--method={'+'.join(method_names)}: the terms of "
            f"{', '.join(views)} crop and flip their own views, but "
            f"--protocol={cfg['protocol']} "
            f"augments with {cfg['augment']}; pass --noaugment or another "
            f"protocol."
        )


def _decay_epochs(epochs, defaults):
    """`--lr_decay_epochs`, else the protocol's fractions of `epochs`:
    `[0.5, 0.75]` of 20 → `[10, 15]`."""
    if FLAGS.lr_decay_epochs is None:
        return [int(round(f * epochs)) for f in defaults["lr_decay_fractions"]]
    try:
        return sorted(int(e) for e in FLAGS.lr_decay_epochs)
    except ValueError:
        raise RecipeError(
            f"--lr_decay_epochs must be integers, got {FLAGS.lr_decay_epochs}."
        ) from None


def learning_rate(cfg, student_name, defaults):
    """The learning rate, scaled linearly with the number of replicas."""
    if FLAGS.lr is not None:
        if FLAGS.lr <= 0:
            raise RecipeError(f"--lr must be positive, got {FLAGS.lr}.")
        lr = FLAGS.lr
    elif cfg["protocol"] == "cifar" and student_name == "mobilenetv2":
        lr = 0.01
    else:
        lr = defaults["lr"]
    if STRATEGY[0] is not None:
        from keras_kd import distribute

        per_replica = cfg["batch_size"] // cfg["replicas"]
        print(distribute.describe_scaling(per_replica, lr, per_replica, STRATEGY[0]))
        _, lr = distribute.scale_batch_and_learning_rate(
            per_replica, lr, per_replica, STRATEGY[0]
        )
    return lr
