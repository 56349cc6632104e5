"""Shared logic of the command-line recipes in `recipes/`.

The recipes (`train_teacher.py`, `distill.py`, `reffakd.py`,
`specialize.py`) are thin absl scripts over this module: flag definitions,
dataset and model resolution, the table of distillation methods, the
training protocol with checkpoint/resume, CSV and TensorBoard logs,
`results.json` and export.

Training settings come from a protocol chosen by the dataset (`--protocol`):

- `digits` (scikit-learn's digits, the offline main job): Adam 3e-3, 120
  epochs, batch 32, no weight decay or augmentation; the student trains on
  the first 100 training images (the teacher, 30 epochs, on all of them),
  KD at T=4 with `0.5·CE + 0.5·KD`. Measured over seeds 0-3 (TensorFlow,
  digits_cnn_large, 99.6 %, → digits_cnn_small, 5,266 parameters): student
  alone 0.803, KD 0.834 mean test accuracy, KD ahead on every seed; a
  1,454-parameter student gained less (0.687 → 0.711 at 200 epochs, and
  KD hurt at 80 epochs: 0.667 → 0.609). FitNets, AT, FA and SKD take one
  tenth of methods.md's CIFAR weights (`term_weights`: 10, 100, 10, 10;
  AFD/RTK keep 200, DLKD its 50/1/20). At the CIFAR weights
  they start 2-230× larger than the cross-entropy (first-epoch means:
  AT 1000 × 0.034 = 34, FitNets 100 × 3.97 = 397, FA 100 × 3.31 = 331,
  SKD 100 × (1.96 + 3.95) = 591, AFD 200 × 0.028 = 5.7; CE 2.55) and hold
  its descent back (AT at 1000: training CE still 1.53 at epoch 100); AT's
  term is a mean over each map's H·W positions, so the 8×8 and 4×4 digits
  maps weigh more per unit of mismatch than CIFAR's 32/16/8 ones. Seed 0
  only, seed-0 teacher, last-epoch test accuracy (there is no validation
  split; the weights were chosen on these figures): AT 1000/100/10/1 →
  0.509/0.796/0.769/0.758, FitNets 100/10/1 → 0.816/0.889/0.836, FA
  100/10 → 0.820/0.862, SKD 100/10 → 0.869/0.920, AFD 200/20 →
  0.838/0.851, RTK 200/20 → 0.844/0.804 (student alone 0.760, KD 0.856).
  Seed 1 (held out), CIFAR weight → one tenth: AT 0.458 → 0.851, FA 0.524
  → 0.867, FitNets 0.829 → 0.891, SKD 0.871 → 0.927, AFD 0.842 → 0.829,
  RTK 0.838 → 0.838 (alone 0.827, KD 0.829), hence AFD/RTK unchanged.
  `--at_weight` etc. override them; the `cifar` protocol keeps methods.md's.
- `cifar` (methods.md §6, any other dataset): SGD momentum 0.9, lr 0.05
  (0.01 for MobileNetV2 students), ×0.1 at 62.5/75/87.5% of the epochs
  (150/180/210 of 240), batch 64, coupled L2 weight decay 5e-4, random crop
  (4-pixel padding) and horizontal flip, per-channel normalisation; each
  method's weights as in methods.md (e.g. `0.1·CE + 0.9·KD`, T=4).

Every training flag left unset takes the protocol's value; the resolved
values are printed and stored in the output directory (`flags.json`).

Example:

```python
from absl import app
from keras_kd import recipes_lib

recipes_lib.define_common_flags(default_output_dir="runs/distill")
recipes_lib.define_distill_flags()

if __name__ == "__main__":
    recipes_lib.run(recipes_lib.distill_main)
```
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
# absl's own flags, not part of a run's identity.
_ABSL_FLAGS = set(FLAGS)

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
        "augment": False,
        "normalize": "unit",
        "teacher": ["digits_cnn_large"],
        "student": "digits_cnn_small",
        "train_limit": 100,
        "kd_temperature": 4.0,
        "kd_weight": 0.5,
        "kd_ce_weight": 0.5,
        # methods.md's CIFAR weights / 10 (see the module docstring).
        "term_weights": {"fitnets": 10.0, "at": 100.0, "fa": 10.0,
                         "skd": 10.0},
    },
    "cifar": {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "epochs": 240,
        "teacher_epochs": 240,
        "batch_size": 64,
        "weight_decay": 5e-4,
        "lr_decay_fractions": [150 / 240, 180 / 240, 210 / 240],
        "augment": True,
        "normalize": "channel",
        "teacher": ["resnet32x4"],
        "student": "resnet8x4",
        "train_limit": 0,
        "kd_temperature": 4.0,
        "kd_weight": 0.9,
        "kd_ce_weight": 0.1,
    },
}

# Flags that do not change what a run computes (not compared on resume).
_VOLATILE_FLAGS = {"overwrite", "verbose", "export", "tflite_quantization",
                   "output_dir", "data_dir"}


_STRATEGY = [None]


class RecipeError(ValueError):
    """A bad flag value or input, reported without a traceback."""


# Flags.


def define_common_flags(default_output_dir):
    """Dataset, training protocol, output and export flags of every recipe."""
    flags.DEFINE_string(
        "dataset", "digits",
        "'digits' (scikit-learn's 8x8 digits, bundled, offline), 'npz:PATH' "
        "(a folder with train.npz and test.npz holding uint8 'x' NHWC and "
        "integer 'y'), or a tensorflow-datasets name (e.g. cifar100) read "
        "from --data_dir.")
    flags.DEFINE_string(
        "data_dir", None, "tensorflow-datasets data directory (default: "
        "tfds' own, ~/tensorflow_datasets).")
    flags.DEFINE_enum(
        "protocol", "auto", ["auto", "digits", "cifar"],
        "Training protocol giving the defaults of unset training flags: "
        "'digits' (Adam 3e-3, 120 epochs, low-data student), 'cifar' "
        "(methods.md §6: SGD 0.05, step schedule, L2 5e-4, crop+flip). "
        "'auto': 'digits' for --dataset=digits, 'cifar' otherwise.")
    flags.DEFINE_string(
        "output_dir", default_output_dir,
        "Where checkpoints, logs (CSV, TensorBoard), models, flags.json and "
        "results.json go. Rerunning the same command resumes an interrupted "
        "run; a directory holding a run with other flags is refused unless "
        "--overwrite.")
    flags.DEFINE_bool(
        "overwrite", False,
        "Delete what --output_dir holds and start over.")
    flags.DEFINE_integer(
        "epochs", None, "Training epochs (protocol default: 120 digits, 240 "
        "cifar).")
    flags.DEFINE_integer(
        "batch_size", None,
        "Batch size (protocol default: 32 digits, 64 cifar).")
    flags.DEFINE_enum(
        "optimizer", None, ["sgd", "adam"],
        "Optimizer (protocol default: adam digits, sgd cifar).")
    flags.DEFINE_float(
        "lr", None, "Learning rate (protocol default: 3e-3 digits; 0.05 "
        "cifar, 0.01 for a mobilenetv2 student).")
    flags.DEFINE_float(
        "momentum", None, "SGD momentum (protocol default: 0.9).")
    flags.DEFINE_float(
        "weight_decay", None,
        "Coupled L2 weight decay as PyTorch SGD's weight_decay, i.e. "
        "wd/2·Σw² added to the loss, on zoo models' weights (protocol "
        "default: 0 digits, 5e-4 cifar).")
    flags.DEFINE_list(
        "lr_decay_epochs", None,
        "Epochs at which the learning rate is multiplied by 0.1 (protocol "
        "default: none for digits; 62.5%/75%/87.5% of --epochs for cifar, "
        "i.e. 150,180,210 of 240).")
    flags.DEFINE_bool(
        "augment", None,
        "Random crop (4-pixel zero padding) and horizontal flip of training "
        "images (protocol default: off digits, on cifar).")
    flags.DEFINE_bool(
        "augment_on_device", False,
        "Augment inside the compiled train step with the keras.ops "
        "RandomCropFlip layer (the Distiller's `augmentation` argument) "
        "instead of in the tf.data pipeline.")
    flags.DEFINE_integer(
        "train_limit", None,
        "Train the student(s) on the first N training images only (0: all). "
        "Teachers always use the whole training split. Protocol default: "
        "100 digits (a low-data regime), 0 cifar.")
    flags.DEFINE_enum(
        "mixed_precision", "float32",
        ["float32", "mixed_float16", "mixed_bfloat16"],
        "dtype policy of the student(s); teachers stay float32 and losses "
        "are computed in float32.")
    flags.DEFINE_bool(
        "jit_compile", False, "Compile train steps with XLA.")
    flags.DEFINE_integer("seed", 0, "Random seed (models, data order).")
    flags.DEFINE_list(
        "export", [],
        "Export the final student: any of saved_model,tflite. Output "
        "parity against Keras is checked and reported.")
    flags.DEFINE_enum(
        "tflite_quantization", None, ["float16", "dynamic_range", "int8"],
        "Post-training quantisation of the TFLite export (default: none, "
        "float32); int8 is calibrated on test images.")
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity (0, 1, 2).")
    flags.DEFINE_enum(
        "distribution", "none",
        ["none", "mirrored", "multi_worker", "data_parallel"],
        "Train across devices (keras_kd.distribute): mirrored (every device "
        "of this machine, TensorFlow), multi_worker (TF_CONFIG, TensorFlow), "
        "data_parallel (keras.distribution, JAX). --batch_size is per "
        "replica; the learning rate is scaled linearly with the global "
        "batch.")


def define_teacher_flags(multiple=True):
    """`--teacher` (zoo names or .keras paths) and teacher training flags."""
    if multiple:
        flags.DEFINE_list(
            "teacher", None,
            "Teacher(s): comma-separated zoo model names (trained on the "
            "whole training split in this run) or paths to trained .keras "
            "models (loaded). Several teachers give multi-teacher "
            "distillation. Protocol default: digits_cnn_large (digits), "
            "resnet32x4 (cifar).")
        flags.DEFINE_list(
            "teacher_weights", None,
            "One positive weight per teacher (default: equal).")
    flags.DEFINE_integer(
        "teacher_epochs", None,
        "Epochs for teachers trained in this run (protocol default: 30 "
        "digits, --epochs cifar).")


def define_student_flags(baseline=True):
    flags.DEFINE_string(
        "student", None,
        "Student: a zoo model name (see keras_kd.models.MODELS) or a path "
        "to a .keras model used as the initial weights. Protocol default: "
        "digits_cnn_small (digits), resnet8x4 (cifar).")
    if baseline:
        flags.DEFINE_bool(
            "baseline", True,
            "Also train the student alone (CE only) with the same protocol "
            "and report it beside the distilled student.")


def define_method_flags(default_method="kd"):
    """`--method` and every method's hyper-parameters (methods.md)."""
    names = ", ".join(sorted(METHODS))
    flags.DEFINE_string(
        "method", default_method,
        f"Distillation method, or several joined by '+' (e.g. kd+fa): "
        f"{names}. " + " ".join(
            f"{name}: {m.help}" for name, m in sorted(METHODS.items())))
    flags.DEFINE_float(
        "ce_weight", None,
        "Weight of the students' cross-entropy. Default: 0.1 for kd alone "
        "(0.1·CE + 0.9·KD, methods.md §0; 0.5 on digits), 1 - "
        "reffakd_alpha for reffakd, 1 otherwise (CE + Σ w·term).")
    define_kd_flags()
    flags.DEFINE_float(
        "kd_weight", None,
        "Weight α of the Hinton KD term, also when added to fa, afd, rtk "
        "(protocol default: 0.9 cifar, 0.5 digits).")
    flags.DEFINE_string(
        "teacher_layer", None,
        "Teacher layer for fitnets/fa (default: its last stage, e.g. "
        "'stage3', before pooling).")
    flags.DEFINE_string(
        "student_layer", None,
        "Student layer for fitnets/fa (default: its last stage).")
    flags.DEFINE_float(
        "fitnets_weight", None,
        "FitNets weight (default: the protocol's; §0: 100).")
    flags.DEFINE_float(
        "at_weight", None,
        "Attention transfer weight (default: the protocol's; §0: 1000).")
    flags.DEFINE_float(
        "fa_weight", None,
        "FA weight β of mean((g(F_s) − F_t)²) (default: the protocol's; §1: "
        "FitNets' 100).")
    flags.DEFINE_enum(
        "fa_aligner", "nonlinear", ["nonlinear", "linear"],
        "FA aligner g: Conv1x1-BN-ReLU-Conv1x1, or Conv1x1-BN (= FitNets).")
    flags.DEFINE_float(
        "afd_weight", None,
        "AFD/RTK weight (default: the protocol's; §4: 200).")
    flags.DEFINE_integer("afd_qk_dim", 128, "AFD/RTK query/key size d (§4).")
    flags.DEFINE_integer(
        "rtk_num_keys", 2, "RTK: keys kept per query (top-k, §4).")
    flags.DEFINE_enum(
        "rtk_query_side", "student", ["student", "teacher"],
        "RTK: which network's features query (§4).")
    flags.DEFINE_float(
        "reffakd_alpha", 0.9,
        "ReffAKD α: (1−α)·CE + α·T²·KL(P[y] ‖ softmax(z_s/T)) (§5).")
    flags.DEFINE_float(
        "reffakd_temperature", 5.0,
        "ReffAKD temperature T (the paper searches 20, 10, 5, 1; §5).")
    flags.DEFINE_integer(
        "reffakd_ae_epochs", None,
        "ReffAKD autoencoder epochs (default: 200 cifar as the paper, 30 "
        "digits).")
    flags.DEFINE_integer(
        "reffakd_per_class", 40,
        "ReffAKD: images sampled per class for the class similarity (§5).")
    flags.DEFINE_float(
        "reffakd_diagonal", 0.0225,
        "ReffAKD: added to the similarity diagonal (0.008 for "
        "Fashion-MNIST; §5).")
    define_skd_flags()
    flags.DEFINE_float("dlkd_correlation_weight", 50.0,
                       "DLKD weight of L_corr (§3; ImageNet: 20).")
    flags.DEFINE_float("dlkd_contrastive_weight", 1.0,
                       "DLKD weight of L_sup (§3; ImageNet: 0.5).")
    flags.DEFINE_float("dlkd_alignment_weight", 20.0,
                       "DLKD weight of L_align (§3; ImageNet: 10).")
    for define in _EXTRA_FLAG_DEFINERS:
        define()


def define_kd_flags():
    flags.DEFINE_float(
        "kd_temperature", None,
        "Hinton KD temperature T (protocol default: 4).")


def define_skd_flags():
    flags.DEFINE_float(
        "skd_weight", None,
        "SKD weight β of each stage's term (default: the protocol's; §2: "
        "100).")
    flags.DEFINE_enum(
        "skd_aligner", "linear", ["linear", "nonlinear"],
        "SKD adapter: Conv1x1+BN (linear) or the FA aligner (§2).")
    flags.DEFINE_list(
        "skd_layers", None,
        "SKD: layers distilled, same names in teacher and student (default: "
        "every stage, e.g. stage1,stage2,stage3).")


# Methods.


@dataclasses.dataclass
class Method:
    """One entry of the method table.

    `terms(ctx)` returns `[(key, term, weight), ...]`; terms with the same
    key from combined methods (e.g. the KD term of `kd+fa`) appear once.
    `teacher` is `"model"` (trained or loaded teachers) or `"soft_labels"`
    (ReffAKD's table, no teacher network).
    """

    help: str
    terms: object
    teacher: str = "model"
    min_teachers: int = 1
    num_classes_may_differ: bool = False


# The feature terms' weights in methods.md (CIFAR), used unless the protocol
# (`PROTOCOLS[...]["term_weights"]`) or a `--<name>_weight` flag says otherwise.
_PAPER_TERM_WEIGHTS = {"fitnets": 100.0, "at": 1000.0, "fa": 100.0,
                       "afd": 200.0, "skd": 100.0}


def _term_weight(ctx, name):
    """`--<name>_weight`, else the protocol's weight, else methods.md's."""
    value = getattr(FLAGS, f"{name}_weight")
    if value is None:
        value = ctx.term_weights.get(name, _PAPER_TERM_WEIGHTS[name])
    return value


def _kd_term(ctx):
    import keras_kd as kd

    return ("kd", kd.losses.LogitsDistillation(ctx.kd_temperature, name="kd"),
            ctx.kd_weight)


def _feature_layers(ctx):
    from keras_kd import models

    def last_stage(model, role):
        try:
            return models.stage_layer_names(model)[-1]
        except ValueError as e:
            raise RecipeError(
                f"{e} Name the {role} layer to distil with "
                f"--{role}_layer.") from None

    teacher_layer = FLAGS.teacher_layer or last_stage(ctx.teachers[0],
                                                      "teacher")
    student_layer = FLAGS.student_layer or last_stage(ctx.student, "student")
    return teacher_layer, student_layer


def _fitnets_terms(ctx):
    import keras_kd as kd

    t, s = _feature_layers(ctx)
    return [("fitnets", kd.losses.FeatureAlignment(t, s, aligner="linear",
                                                   name="fitnets"),
             _term_weight(ctx, "fitnets"))]


def _at_terms(ctx):
    import keras_kd as kd
    from keras_kd import models

    stages = [
        [n for n in models.stage_layer_names(m) if n != "stem"]
        for m in (ctx.teachers[0], ctx.student)
    ]
    count = min(map(len, stages))
    return [("at", kd.losses.AttentionTransfer(stages[0][-count:],
                                               stages[1][-count:], name="at"),
             _term_weight(ctx, "at"))]


def _fa_terms(ctx):
    import keras_kd as kd

    t, s = _feature_layers(ctx)
    return [_kd_term(ctx),
            ("fa", kd.losses.FeatureAlignment(t, s, aligner=FLAGS.fa_aligner,
                                            name="fa"),
             _term_weight(ctx, "fa"))]


def _afd_terms(ctx, rtk=False):
    import keras_kd as kd
    from keras_kd import models

    blocks = [models.block_layer_names(m) for m in (ctx.teachers[0],
                                                    ctx.student)]
    if rtk:
        term = kd.losses.RepresentativeTeacherKeys(
            blocks[0], blocks[1], qk_dim=FLAGS.afd_qk_dim,
            num_keys=FLAGS.rtk_num_keys, query_side=FLAGS.rtk_query_side,
            name="rtk")
    else:
        term = kd.losses.AttentionFeatureDistillation(
            blocks[0], blocks[1], qk_dim=FLAGS.afd_qk_dim, name="afd")
    return [_kd_term(ctx), ("rtk" if rtk else "afd", term,
                            _term_weight(ctx, "afd"))]


def _skd_layers(ctx):
    """Stage pairs for SKD: `--skd_layers` or every stage, from the end."""
    from keras_kd import models

    if FLAGS.skd_layers:
        return list(FLAGS.skd_layers), list(FLAGS.skd_layers)
    stages = [
        [n for n in models.stage_layer_names(m) if n != "stem"]
        for m in (ctx.teachers[0], ctx.student)
    ]
    count = min(map(len, stages))
    return stages[0][-count:], stages[1][-count:]


def _skd_terms(ctx):
    import keras_kd as kd

    teacher_layers, student_layers = _skd_layers(ctx)
    return [
        (f"skd_{s}", kd.losses.FeatureAlignment(t, s, aligner=FLAGS.skd_aligner,
                                                name=f"skd_{s}"),
         _term_weight(ctx, "skd"))
        for t, s in zip(teacher_layers, student_layers)
    ]


def _dlkd_terms(ctx):
    import keras_kd as kd

    term = kd.losses.DualLevelDistillation(
        "features", "features",
        correlation_weight=FLAGS.dlkd_correlation_weight,
        contrastive_weight=FLAGS.dlkd_contrastive_weight,
        alignment_weight=FLAGS.dlkd_alignment_weight, name="dlkd")
    return [("dlkd", term, 1.0)]


def _reffakd_terms(ctx):
    import keras_kd as kd

    return [("reffakd", kd.losses.LogitsDistillation(
        FLAGS.reffakd_temperature, name="reffakd"), FLAGS.reffakd_alpha)]


METHODS = {
    "kd": Method("Hinton KD, T²·KL of tempered softmaxes (§0).",
                 lambda ctx: [_kd_term(ctx)]),
    "fitnets": Method("MSE of a Conv1x1+BN regressor of one student stage "
                      "to the teacher's (§0).", _fitnets_terms),
    "at": Method("Attention transfer over the stages (§0).", _at_terms),
    "fa": Method("KD + non-linear feature alignment at the last stage "
                 "(§1).", _fa_terms),
    "fa_multi": Method("fa with several teachers, one aligner each; two "
                       "teachers by default (§1).", _fa_terms,
                       min_teachers=2),
    "afd": Method("KD + attention-based feature distillation over the "
                  "residual-block outputs (§4).", _afd_terms),
    "rtk": Method("KD + AFD over the top-k representative keys (§4).",
                  lambda ctx: _afd_terms(ctx, rtk=True)),
    "skd": Method("Feature-level KD only, an adapter per stage, no logit "
                  "term; the teacher may have more classes (§2).", _skd_terms,
                  num_classes_may_differ=True),
    "dlkd": Method("Dual-level KD on 4 rotated views: correlation, "
                   "supervised contrastive and alignment of the pooled "
                   "'features' (§3).", _dlkd_terms),
    "reffakd": Method("No teacher: autoencoder class-similarity soft labels "
                      "(§5).", _reffakd_terms, teacher="soft_labels"),
}

# Registration hooks for methods defined in other modules (one entry each).
_EXTRA_FLAG_DEFINERS = []


def parse_methods(spec):
    """`'kd+fa'` → `['kd', 'fa']`, checked against the method table."""
    names = [n.strip() for n in spec.split("+")]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise RecipeError(
            f"Unknown method {'+'.join(unknown) or spec!r} in "
            f"--method={spec}. Available: {', '.join(sorted(METHODS))}, or "
            f"several joined by '+', e.g. --method=kd+fa.")
    if len(set(names)) != len(names):
        raise RecipeError(f"--method={spec} repeats a method.")
    kinds = {METHODS[n].teacher for n in names}
    if len(kinds) > 1:
        raise RecipeError(
            f"--method={spec} mixes reffakd (soft labels, no teacher) with "
            f"methods that need a teacher network; run them separately.")
    return names


# Configuration.


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
    for name in ("optimizer", "momentum", "epochs", "batch_size",
                 "weight_decay", "augment", "train_limit"):
        cfg[name] = pick(name)
    teacher_epochs = getattr(FLAGS, "teacher_epochs", None)
    cfg["teacher_epochs"] = (
        teacher_epochs if teacher_epochs is not None
        else defaults["teacher_epochs"] if protocol == "digits"
        else cfg["epochs"])
    cfg["normalize"] = defaults["normalize"]
    cfg["replicas"] = 1
    if _STRATEGY[0] is not None:
        from keras_kd import distribute

        cfg["replicas"] = distribute.num_replicas(_STRATEGY[0])
        cfg["batch_size"] *= cfg["replicas"]
    if FLAGS.lr_decay_epochs is None:
        cfg["lr_decay_epochs"] = [
            int(round(f * cfg["epochs"])) for f in defaults["lr_decay_fractions"]
        ]
    else:
        try:
            cfg["lr_decay_epochs"] = sorted(int(e) for e in FLAGS.lr_decay_epochs)
        except ValueError:
            raise RecipeError(
                f"--lr_decay_epochs must be integers, got "
                f"{FLAGS.lr_decay_epochs}.") from None
    for name, low in (("epochs", 1), ("batch_size", 1), ("train_limit", 0),
                      ("teacher_epochs", 0)):
        if cfg[name] < low:
            raise RecipeError(f"--{name} must be at least {low}, got "
                              f"{cfg[name]}.")
    if cfg["weight_decay"] < 0:
        raise RecipeError(f"--weight_decay must be >= 0, got "
                          f"{cfg['weight_decay']}.")
    return cfg, defaults


def _lr(cfg, student_name, defaults):
    """The learning rate, scaled linearly with the number of replicas."""
    if FLAGS.lr is not None:
        if FLAGS.lr <= 0:
            raise RecipeError(f"--lr must be positive, got {FLAGS.lr}.")
        lr = FLAGS.lr
    elif cfg["protocol"] == "cifar" and student_name == "mobilenetv2":
        lr = 0.01
    else:
        lr = defaults["lr"]
    if _STRATEGY[0] is not None:
        from keras_kd import distribute

        per_replica = cfg["batch_size"] // cfg["replicas"]
        _, lr = distribute.scale_batch_and_learning_rate(
            per_replica, lr, per_replica, _STRATEGY[0])
    return lr


# Data and models.


def load_data(cfg):
    """Loads `--dataset` and builds the normalisation, or a RecipeError."""
    from keras_kd import data

    try:
        if FLAGS.dataset == "digits" or FLAGS.dataset.startswith("npz:"):
            (x, y), (x_test, y_test), info = data.load(FLAGS.dataset,
                                                       FLAGS.data_dir)
        else:
            (x, y), (x_test, y_test), info = _load_tfds(FLAGS.dataset,
                                                        FLAGS.data_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise RecipeError(f"--dataset={FLAGS.dataset}: {e}") from None
    except ImportError as e:
        raise RecipeError(
            f"--dataset={FLAGS.dataset} needs tensorflow-datasets: {e}"
        ) from None
    if len(x) == 0 or len(x_test) == 0:
        raise RecipeError(f"--dataset={FLAGS.dataset} has an empty train or "
                          f"test split.")
    if cfg["normalize"] == "channel":
        mean, std = data.channel_stats(x)
        std = np.maximum(std, 1e-3)
    else:
        mean = np.zeros(x.shape[-1], "float32")
        std = np.full(x.shape[-1], 255.0, "float32")
    return Data(x, y, x_test, y_test, info, mean, std)


def _load_tfds(name, data_dir):
    """A tensorflow-datasets dataset as NumPy arrays, read in batches.

    Unlike `keras_kd.data.load`, does not ask TFDS for whole splits
    (`batch_size=-1`), which `tfds.testing.mock_data` cannot serve.
    """
    import tensorflow_datasets as tfds

    try:
        (train, test), builder_info = tfds.load(
            name, split=["train", "test"], data_dir=data_dir,
            as_supervised=True, with_info=True)
    except tfds.core.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown dataset '{name}': use 'digits', 'npz:PATH' (a folder "
            f"of train/test .npz files) or a tensorflow-datasets name, and "
            f"'{name}' is not a known tensorflow-datasets name.") from e

    def arrays(ds):
        xs, ys = [], []
        for images, labels in tfds.as_numpy(ds.batch(4096)):
            xs.append(images)
            ys.append(labels)
        x, y = np.concatenate(xs), np.concatenate(ys).astype("int64")
        return (x[..., None] if x.ndim == 3 else x), y

    (x, y), (x_test, y_test) = arrays(train), arrays(test)
    if x.dtype != np.uint8:
        raise ValueError(f"'{name}' images are {x.dtype}; the recipes take "
                         f"uint8 images.")
    label = builder_info.features[builder_info.supervised_keys[1]]
    info = {"num_classes": int(label.num_classes),
            "class_names": list(label.names),
            "input_shape": tuple(int(d) for d in x.shape[1:]),
            "source": f"tensorflow_datasets:{name}"}
    return (x, y), (x_test, y_test), info


@dataclasses.dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict
    mean: np.ndarray
    std: np.ndarray

    def normalize(self, images):
        return ((images.astype("float32") - self.mean) / self.std).astype(
            "float32")


def resolve_model(spec, num_classes, input_shape, role, weight_decay,
                  dtype_policy="float32"):
    """A zoo model (untrained) or a loaded `.keras` model, checked.

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
            raise RecipeError(f"--{role}={spec} is not a loadable .keras "
                              f"model: {e}") from None
        shape = tuple(model.inputs[0].shape[1:]) if getattr(
            model, "inputs", None) else None
        if shape is not None and shape != tuple(input_shape):
            raise RecipeError(
                f"--{role}={spec} takes inputs of shape {shape}, but the "
                f"dataset's images are {tuple(input_shape)}.")
        return model, True
    if spec not in models.MODELS:
        raise RecipeError(
            f"Unknown model --{role}={spec}: use a path to a .keras file or "
            f"one of {', '.join(sorted(models.MODELS))}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        model = models.get(spec, num_classes=num_classes,
                           input_shape=input_shape, weight_decay=weight_decay)
    finally:
        keras.config.set_dtype_policy(previous)
    return model, False


def num_outputs(model):
    return int(model.outputs[0].shape[-1])


# Training.


def train_indices(n, batch_size, epochs, first_epoch, seed):
    """Per-epoch shuffled index batches for epochs `first_epoch..epochs-1`.

    Each epoch's order depends only on `(seed, epoch)`, so a resumed run sees
    the same batches as an uninterrupted one.
    """
    return [
        np.random.default_rng([seed, epoch]).permutation(n)
        for epoch in range(first_epoch, epochs)
    ]


def make_train_dataset(data, x, y, cfg, first_epoch, seed, host_augment):
    import tensorflow as tf

    batch_size = cfg["batch_size"]
    perms = train_indices(len(x), batch_size, cfg["epochs"], first_epoch,
                          seed)
    x_const, y_const = tf.constant(x), tf.constant(y)
    mean, std = tf.constant(data.mean), tf.constant(data.std)
    steps = steps_per_epoch(len(x), cfg)
    batches = []
    for epoch, perm in zip(range(first_epoch, cfg["epochs"]), perms):
        for step in range(steps):
            batches.append(perm[step * batch_size:(step + 1) * batch_size])
    lengths = [len(b) for b in batches]
    flat = np.concatenate(batches) if batches else np.zeros(0, "int64")
    # A ragged list of batches: (start, length) into `flat`, so the last
    # batch of an epoch may be smaller, as PyTorch's DataLoader.
    starts = np.cumsum([0] + lengths[:-1]).astype("int64")
    flat_const = tf.constant(flat, "int64")
    global_step0 = first_epoch * steps

    def gather(i, start, length):
        index = flat_const[start:start + length]
        images = tf.cast(tf.gather(x_const, index), "float32")
        labels = tf.gather(y_const, index)
        if host_augment:
            images = _host_crop_flip(images, seed, global_step0 + i)
        return (images - mean) / std, labels

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(batches), dtype="int64"), starts,
         np.asarray(lengths, "int64")))
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True).prefetch(tf.data.AUTOTUNE), steps


def _host_crop_flip(images, seed, step, padding=4):
    """Random crop + flip of a batch, seeded by `(seed, step)` (stateless)."""
    import tensorflow as tf

    shape = tf.shape(images)
    padded = tf.pad(images, [[0, 0], [padding, padding],
                             [padding, padding], [0, 0]])
    base = tf.stack([tf.cast(seed, "int64"), step])
    offsets = tf.random.stateless_uniform(
        tf.stack([shape[0], 2]), base, 0, 2 * padding + 1, dtype="int32")
    flips = tf.random.stateless_uniform(
        tf.stack([shape[0]]), base + [0, 1 << 40]) < 0.5

    def one(args):
        image, offset, flip = args
        crop = tf.slice(image, [offset[0], offset[1], 0],
                        [shape[1], shape[2], shape[3]])
        return tf.cond(flip, lambda: tf.reverse(crop, [1]), lambda: crop)

    return tf.map_fn(one, (padded, offsets, flips),
                     fn_output_signature=tf.float32)


def steps_per_epoch(n, cfg):
    if cfg["replicas"] > 1:
        # Every batch must split evenly over the replicas (JAX's
        # DataParallel refuses otherwise): drop each epoch's partial batch.
        return max(1, n // cfg["batch_size"])
    return max(1, math.ceil(n / cfg["batch_size"]))


def make_optimizer(cfg, lr, steps):
    import keras

    boundaries = [e * steps for e in cfg["lr_decay_epochs"]]
    schedule = lr
    if boundaries:
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [lr * 0.1**i for i in range(len(boundaries) + 1)])
    if cfg["optimizer"] == "sgd":
        return keras.optimizers.SGD(schedule, momentum=cfg["momentum"])
    return keras.optimizers.Adam(schedule)


class _TrainTimer:
    """Seconds spent in training batches (validation excluded)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = 0.0
                self.epochs = 0
                self._start = None

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_test_begin(self, logs=None):
                if self._start is not None:
                    self.seconds += time.perf_counter() - self._start
                    self.epochs += 1
                    self._start = None

            def on_epoch_end(self, epoch, logs=None):
                self.on_test_begin()

        return Timer()


def _read_backup_epoch(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def _truncate_csv(path, first_epoch):
    """Drops CSV rows of epochs that the resumed run will repeat."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < first_epoch]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_phase(name, model, data, x, y, cfg, lr, seed, out_dir,
                compile_kwargs, host_augment):
    """Fits `model` (a student or a Distiller) with checkpoint/resume.

    Writes `<out_dir>/<name>/`: `log.csv` (every loss term and the test
    accuracy per epoch), `tensorboard/`, `backup/` while running, and
    `result.json` when done. A finished phase is not retrained: its weights
    are loaded from `weights.weights.h5`.
    """
    import keras

    phase_dir = os.path.join(out_dir, name)
    result_path = os.path.join(phase_dir, "result.json")
    weights_path = os.path.join(phase_dir, "weights.weights.h5")
    os.makedirs(phase_dir, exist_ok=True)
    steps = steps_per_epoch(len(x), cfg)
    model.compile(
        optimizer=make_optimizer(cfg, lr, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=FLAGS.jit_compile,
        # Several steps per call cut the per-step overhead of small models.
        steps_per_execution=min(steps, 8),
        **compile_kwargs,
    )
    if os.path.exists(result_path):
        model.load_weights(weights_path)
        with open(result_path) as f:
            result = json.load(f)
        print(f"[{name}] already trained; loaded from {phase_dir}.")
        return result
    backup_dir = os.path.join(phase_dir, "backup")
    first_epoch = _read_backup_epoch(backup_dir)
    log_path = os.path.join(phase_dir, "log.csv")
    _truncate_csv(log_path, first_epoch)
    if first_epoch:
        print(f"[{name}] resuming at epoch {first_epoch + 1}/{cfg['epochs']}"
              f" from {backup_dir}.")
    else:
        print(f"[{name}] training {cfg['epochs']} epochs on {len(x)} images.")
    train_ds, steps = make_train_dataset(data, x, y, cfg, first_epoch, seed,
                                         host_augment)
    test = (data.normalize(data.x_test), data.y_test)
    timer = _TrainTimer()
    start = time.perf_counter()
    model.fit(
        train_ds,
        epochs=cfg["epochs"],
        steps_per_epoch=steps,
        shuffle=False,  # train_ds shuffles itself, deterministically.
        validation_data=test,
        validation_batch_size=256,
        callbacks=[
            # Two checkpoints, so a kill while one is written falls back
            # to the previous epoch's.
            keras.callbacks.BackupAndRestore(backup_dir,
                                             double_checkpoint=True),
            keras.callbacks.CSVLogger(log_path, append=True),
            keras.callbacks.TensorBoard(
                os.path.join(phase_dir, "tensorboard"), write_graph=False),
            timer,
        ],
        verbose=FLAGS.verbose,
    )
    wall = time.perf_counter() - start
    model.save_weights(weights_path)
    rows = _read_csv(log_path)
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = int(np.argmax(accuracies))
    trained_epochs = cfg["epochs"] - first_epoch
    result = {
        "last_epoch_test_accuracy": accuracies[-1],
        "best_epoch_test_accuracy": accuracies[best],
        "best_epoch": best + 1,
        "epochs": len(rows),
        "train_images": int(len(x)),
        "wall_seconds": wall,
        "train_seconds": timer.seconds,
        "images_per_second": (len(x) * trained_epochs / timer.seconds
                              if timer.seconds else None),
        "resumed_at_epoch": first_epoch,
        "final_losses": {k: float(v) for k, v in rows[-1].items()
                         if k not in ("epoch",)},
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def student_data(data, cfg):
    limit = cfg["train_limit"]
    if limit:
        return data.x[:limit], data.y[:limit]
    return data.x, data.y


def augmentation_layer(cfg, seed):
    if cfg["augment"] and FLAGS.augment_on_device:
        from keras_kd.data import RandomCropFlip

        return RandomCropFlip(padding=4, seed=seed)
    return None


def train_plain(name, model, data, x, y, cfg, lr, seed, out_dir):
    """Trains a model alone with cross-entropy (a teacher or a baseline)."""
    import keras

    augmentation = augmentation_layer(cfg, seed)
    trained = model
    if augmentation is not None:
        inputs = keras.Input(model.inputs[0].shape[1:])
        trained = keras.Model(inputs, model(augmentation(inputs)),
                              name=f"{model.name}_augmented")
    result = train_phase(name, trained, data, x, y, cfg, lr, seed, out_dir,
                         {}, host_augment=cfg["augment"] and not augmentation)
    return result


# Output directory.


def run_flags(recipe):
    """The flags that define a run, as stored in `flags.json`."""
    values = {"recipe": recipe}
    for name, flag in sorted(FLAGS.flag_values_dict().items()):
        if name in _VOLATILE_FLAGS or name in _ABSL_FLAGS:
            continue
        values[name] = flag
    return values


def prepare_output_dir(recipe):
    """Refuses a directory holding another run; writes `flags.json`."""
    out = FLAGS.output_dir
    stored = run_flags(recipe)
    path = os.path.join(out, "flags.json")
    if os.path.isdir(out) and os.listdir(out):
        if FLAGS.overwrite:
            if not os.path.exists(path):
                raise RecipeError(
                    f"--output_dir={out} holds files that are not a "
                    f"keras_kd run (no flags.json); --overwrite only "
                    f"replaces runs. Choose another --output_dir.")
            shutil.rmtree(out)
        elif not os.path.exists(path):
            raise RecipeError(
                f"--output_dir={out} is not empty and holds no keras_kd run "
                f"(no flags.json). Choose an empty or new directory.")
        else:
            with open(path) as f:
                previous = json.load(f)
            if previous != stored:
                diff = {
                    k: (previous.get(k), stored.get(k))
                    for k in sorted(set(previous) | set(stored))
                    if previous.get(k) != stored.get(k)
                }
                lines = "\n".join(f"  --{k}: stored {a!r}, now {b!r}"
                                  for k, (a, b) in diff.items())
                raise RecipeError(
                    f"--output_dir={out} holds a run with different flags:\n"
                    f"{lines}\nRerun with the same flags to resume it, pass "
                    f"--overwrite to discard it, or choose another "
                    f"--output_dir.")
            print(f"Resuming the run in {out}.")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(stored, f, indent=2)


# Reporting and export.


def model_size(model):
    params = int(model.count_params())
    size = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize
               for w in model.weights)
    return params, size


def print_table(rows, title):
    """Prints `[(name, result_dict, model), ...]` as an aligned table."""
    header = ("model", "arch", "test acc (last)", "test acc (best)",
              "params", "size")
    lines = [header]
    for name, result, arch, params, size in rows:
        lines.append((
            name, arch,
            f"{result['last_epoch_test_accuracy']:.4f}",
            f"{result['best_epoch_test_accuracy']:.4f} "
            f"(ep {result['best_epoch']})",
            f"{params:,}", _format_bytes(size)))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(rule)
    for i, row in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print(rule)
    print(rule)


def _format_bytes(size):
    return f"{size / 1024:.1f} KiB" if size < 1 << 20 else (
        f"{size / (1 << 20):.2f} MiB")


def check_export_flags():
    formats = [f.strip() for f in FLAGS.export if f.strip()]
    bad = [f for f in formats if f not in ("saved_model", "tflite")]
    if bad:
        raise RecipeError(
            f"Unknown --export format(s) {bad}; use saved_model, tflite or "
            f"both (comma-separated).")
    import keras

    backend = keras.backend.backend()
    if "tflite" in formats and backend != "tensorflow":
        if FLAGS["export"].present:
            raise RecipeError(
                f"--export=tflite needs the TensorFlow backend (the backend "
                f"is {backend!r}): run with KERAS_BACKEND=tensorflow, or "
                f"--export=saved_model.")
        print(f"Note: no TFLite export on the {backend!r} backend (it needs "
              f"TensorFlow); the student is saved as student.keras.")
        formats = [f for f in formats if f != "tflite"]
    return tuple(formats)


def export_student(student, data, formats):
    """Exports the student with `keras_kd.export` and prints the report."""
    if not formats:
        return None
    from keras_kd import export

    out = os.path.join(FLAGS.output_dir, "export")
    report = export.export(
        student, out, formats=formats,
        sample_inputs=data.normalize(data.x_test[:200]),
        sample_labels=data.y_test[:200],
        tflite_quantization=FLAGS.tflite_quantization)
    print("\nExported the student (inputs: (pixels - mean) / std with "
          f"mean={data.mean.tolist()}, std={data.std.tolist()}):")
    for fmt, item in report.items():
        extra = (f", {_format_bytes(item['size_bytes'])}"
                 if "size_bytes" in item else "")
        if "accuracy" in item:
            extra += f", accuracy {item['accuracy']:.4f} on 200 test images"
        print(f"  {fmt}: {item['path']}  (max |Δ| vs Keras = "
              f"{item['max_abs_diff']:.2e}{extra})")
    return report


def write_results(results):
    path = os.path.join(FLAGS.output_dir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=_json_default)
    os.replace(tmp, path)
    print(f"\nResults: {path}")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# Running.


def run(main):
    """`absl.app.run(main)`, reporting `RecipeError`s as one-line errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def wrapped(argv):
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            raise app.UsageError(
                f"Unexpected arguments {argv[1:]}; every option is a "
                f"--flag (see --helpfull).")
        try:
            from keras_kd import distribute

            try:
                _STRATEGY[0] = distribute.strategy_from_flag(
                    FLAGS.distribution)
            except ValueError as e:
                raise RecipeError(f"--distribution: {e}") from None
            with distribute.scope(_STRATEGY[0]):
                main(argv)
        except RecipeError as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)


# Recipes.


def _seed_all(seed):
    import keras

    keras.utils.set_random_seed(seed)


def _resolve_teachers(specs, data, cfg, seed):
    """Builds or loads the teachers; returns `[(spec, model, loaded)]`."""
    teachers = []
    for i, spec in enumerate(specs):
        _seed_all(seed + 100 + i)
        model, loaded = resolve_model(
            spec, data.info["num_classes"], data.info["input_shape"],
            "teacher", cfg["weight_decay"])
        teachers.append((spec, model, loaded))
    return teachers


def _train_or_evaluate_teachers(teachers, data, cfg, lr, seed):
    """Trains the zoo teachers (phase `teacher_<i>`), evaluates loaded ones."""
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
        result = train_plain(f"teacher_{i}", model, data, data.x, data.y,
                             teacher_cfg, lr, seed + 100 + i,
                             FLAGS.output_dir)
        model.trainable = False
        path = os.path.join(FLAGS.output_dir, f"teacher_{i}.keras")
        model.save(path)
        result["saved_to"] = path
        results.append(result)
    return results


def _ce_weight(method_names, defaults):
    if FLAGS.ce_weight is not None:
        if FLAGS.ce_weight < 0:
            raise RecipeError(f"--ce_weight must be >= 0, got "
                              f"{FLAGS.ce_weight}.")
        return FLAGS.ce_weight
    if method_names == ["kd"]:
        return defaults["kd_ce_weight"]
    if method_names == ["reffakd"]:
        return 1.0 - FLAGS.reffakd_alpha
    return 1.0


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

    _seed_all(seed + 200)
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
    methods = [METHODS[name] for name in method_names]
    formats = check_export_flags()
    soft_labels = methods[0].teacher == "soft_labels"
    seed = FLAGS.seed

    import keras

    import keras_kd as kd

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
    lr = _lr(cfg, student_name, defaults)

    def build_student():
        _seed_all(seed + 1)
        model, _ = resolve_model(student_name, num_classes, input_shape,
                                 "student", cfg["weight_decay"],
                                 FLAGS.mixed_precision)
        if num_outputs(model) != num_classes:
            raise RecipeError(
                f"--student={student_name} has {num_outputs(model)} outputs "
                f"but the dataset has {num_classes} classes.")
        return model

    student = build_student()
    baseline = build_student() if FLAGS.baseline else None

    # The terms and the Distiller, built now so that bad combinations fail
    # before anything is written.
    kd_temperature = FLAGS.kd_temperature or defaults["kd_temperature"]
    kd_weight = (defaults["kd_weight"] if FLAGS.kd_weight is None
                 else FLAGS.kd_weight)
    ctx = _Context([m for _, m, _ in teachers], student, kd_temperature,
                   kd_weight, defaults.get("term_weights", {}))
    terms = {}
    for method in methods:
        for key, term, weight in method.terms(ctx):
            terms.setdefault(key, (term, weight))
    ce_weight = _ce_weight(method_names, defaults)
    teacher_weights = _teacher_weights(len(teachers))
    augmentation = augmentation_layer(cfg, seed)

    def build_distiller(teacher_models):
        try:
            return kd.Distiller(
                teacher_models, student, [t for t, _ in terms.values()],
                distillation_loss_weights=[w for _, w in terms.values()],
                student_loss_weight=ce_weight, weighting="additive",
                teacher_weights=teacher_weights, augmentation=augmentation)
        except ValueError as e:
            raise RecipeError(f"--method={FLAGS.method}: {e}") from None

    if soft_labels:
        uniform = np.full((num_classes, num_classes), 1.0 / num_classes)
        distiller = build_distiller(kd.SoftLabelTeacher(uniform))
    else:
        distiller = build_distiller([m for _, m, _ in teachers])

    prepare_output_dir(recipe)
    _print_config(cfg, lr, method_names, terms, ce_weight, data, x,
                  student_name, specs)

    teacher_results = _train_or_evaluate_teachers(teachers, data, cfg, lr,
                                                  seed)
    reffakd_cost = None
    if soft_labels:
        table, reffakd_cost = _soft_label_table(data, x, y, cfg, seed)
        np.save(os.path.join(FLAGS.output_dir, "soft_labels.npy"), table)
        # Rebuilt with the real table; the terms are built already.
        distiller = build_distiller(kd.SoftLabelTeacher(table))

    baseline_result = None
    if baseline is not None:
        baseline_result = train_plain("student_alone", baseline, data, x, y,
                                      cfg, lr, seed + 1, FLAGS.output_dir)
    distilled_result = train_phase(
        "distilled", distiller, data, x, y, cfg, lr, seed + 1,
        FLAGS.output_dir, {}, host_augment=cfg["augment"] and not augmentation)
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
                         kd_weight=kd_weight,
                         term_weights={k: w for k, (_, w) in terms.items()}),
        "dataset": {**data.info, "train_images": int(len(data.x)),
                    "student_train_images": int(len(x)),
                    "test_images": int(len(data.x_test)),
                    "normalization": {"mean": data.mean, "std": data.std}},
        "models": models_report,
        "reffakd_autoencoder": reffakd_cost,
        "export": export_report,
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(results)
    return results


@dataclasses.dataclass
class _Context:
    """What a method's `terms` function may read."""

    teachers: list
    student: object
    kd_temperature: float
    kd_weight: float
    # The protocol's feature-term weights (`PROTOCOLS[...]["term_weights"]`).
    term_weights: dict = dataclasses.field(default_factory=dict)


def _print_config(cfg, lr, method_names, terms, ce_weight, data, x,
                  student_name, teacher_specs):
    weights = " + ".join([f"{ce_weight:g}·CE"] + [
        f"{w:g}·{k}" for k, (_, w) in terms.items()])
    print(f"Dataset {FLAGS.dataset}: {len(data.x)} training images "
          f"({len(x)} for the student), {len(data.x_test)} test, "
          f"{data.info['num_classes']} classes, "
          f"{tuple(data.info['input_shape'])}.")
    print(f"Protocol {cfg['protocol']}: {cfg['optimizer']} lr {lr:g}, "
          f"{cfg['epochs']} epochs (teachers {cfg['teacher_epochs']}), "
          f"batch {cfg['batch_size']}, weight decay {cfg['weight_decay']:g}, "
          f"lr ×0.1 at {cfg['lr_decay_epochs'] or 'never'}, augment "
          f"{cfg['augment']}.")
    if teacher_specs is None:
        print(f"Model {student_name}; loss {weights}.")
    else:
        print(f"Teachers {teacher_specs or 'none (soft labels)'} → student "
              f"{student_name}; loss {weights}.")


def train_teacher_main(argv):
    """Trains one model with cross-entropy on the whole training split."""
    del argv
    start = time.perf_counter()
    cfg, defaults = resolve_protocol()
    formats = check_export_flags()
    data = load_data(cfg)
    spec = FLAGS.model or defaults["teacher"][0]
    _seed_all(FLAGS.seed)
    model, loaded = resolve_model(spec, data.info["num_classes"],
                                  data.info["input_shape"], "model",
                                  cfg["weight_decay"], FLAGS.mixed_precision)
    if num_outputs(model) != data.info["num_classes"]:
        raise RecipeError(
            f"--model={spec} has {num_outputs(model)} outputs but the "
            f"dataset has {data.info['num_classes']} classes.")
    lr = _lr(cfg, spec, defaults)
    prepare_output_dir("train_teacher")
    _print_config(cfg, lr, [], {}, 1.0, data, data.x, spec, None)
    result = train_plain("model", model, data, data.x, data.y, cfg, lr,
                         FLAGS.seed, FLAGS.output_dir)
    path = os.path.join(FLAGS.output_dir, "model.keras")
    model.save(path)
    params, size = model_size(model)
    print_table([("model", result, spec, params, size)],
                f"{FLAGS.dataset}: test accuracy")
    print(f"\nSaved {path}; use it with --teacher={path}.")
    export_report = export_student(model, data, formats)
    results = {
        "recipe": "train_teacher", "flags": run_flags("train_teacher"),
        "resolved": dict(cfg, lr=lr),
        "dataset": {**data.info, "normalization": {"mean": data.mean,
                                                   "std": data.std}},
        "models": {"model": dict(result, arch=spec, params=params,
                                 size_bytes=size, saved_to=path)},
        "export": export_report,
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(results)
    return results


def set_flag_defaults(**defaults):
    """Changes the defaults of flags defined above (e.g. `export`)."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)


def define_specialize_flags():
    """Flags of `recipes/specialize.py` (SKD, methods.md §2)."""
    flags.DEFINE_list(
        "classes", None,
        "The task: class ids or names of --dataset to specialise to "
        "(default: 3,5,8 on digits, the first 5 classes otherwise).")
    flags.DEFINE_integer(
        "images_per_class", None,
        "Training images per task class, picked at random with --seed "
        "(0: all). Protocol default: 10 digits, 0 cifar.")
    flags.DEFINE_list(
        "baselines", ["scratch", "finetune", "subset_kd"],
        "Baselines trained beside SKD on the same task data: scratch (the "
        "student alone), finetune (a copy of the teacher's backbone with a "
        "new head), subset_kd (logit KD against the teacher's softmax "
        "restricted to the task classes and renormalised, 0.1·CE + "
        "0.9·KD_S).")


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

    import keras_kd as kd

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
    lr = _lr(cfg, student_name, defaults)

    def build_student():
        _seed_all(seed + 1)
        model, _ = resolve_model(student_name, num_task,
                                 data.info["input_shape"], "student",
                                 cfg["weight_decay"], FLAGS.mixed_precision)
        if num_outputs(model) != num_task:
            raise RecipeError(
                f"--student={student_name} has {num_outputs(model)} outputs "
                f"but the task has {num_task} classes.")
        return model

    student = build_student()
    ctx = _Context([teacher], student, None, None)
    terms = _skd_terms(ctx)
    augmentation = augmentation_layer(cfg, seed)
    try:
        distiller = kd.Distiller(
            teacher, student, [t for _, t, _ in terms],
            distillation_loss_weights=[w for _, _, w in terms],
            student_loss_weight=1.0, weighting="additive",
            augmentation=augmentation)
        others = {}
        if "scratch" in baselines:
            others["scratch"] = build_student()
        if "subset_kd" in baselines:
            kd_temperature = FLAGS.kd_temperature or defaults[
                "kd_temperature"]
            others["subset_kd"] = kd.Distiller(
                teacher, build_student(),
                kd.losses.SubsetLogitsDistillation(mapping.original_ids,
                                                   kd_temperature),
                distillation_loss_weights=[0.9], student_loss_weight=0.1,
                weighting="additive", augmentation=augmentation)
    except ValueError as e:
        raise RecipeError(f"SKD: {e}") from None

    prepare_output_dir("specialize")
    print(f"Task: classes {mapping!r}, {len(task.x)} training images "
          f"({per_class or 'all'} per class), {len(task.x_test)} test.")
    _print_config(cfg, lr, ["skd"], {k: (t, w) for k, t, w in terms}, 1.0,
                  data, task.x, student_name, [spec])
    teacher_result = _train_or_evaluate_teachers(teachers, data, cfg, lr,
                                                 seed)[0]
    rows = []
    params, size = model_size(teacher)
    rows.append(("teacher (all classes)", teacher_result, spec, params, size))
    report = {"teacher": dict(teacher_result, arch=spec, params=params,
                              size_bytes=size)}
    host_augment = cfg["augment"] and not augmentation
    for name in baselines:
        if name == "finetune":
            _seed_all(seed + 2)
            model = kd.skd.finetune_model(teacher, num_task)
            result = train_plain("finetune", model, task, task.x, task.y,
                                 cfg, lr, seed + 1, FLAGS.output_dir)
            arch = f"{spec} + new head"
        elif name == "scratch":
            model = others[name]
            result = train_plain("scratch", model, task, task.x, task.y, cfg,
                                 lr, seed + 1, FLAGS.output_dir)
            arch = student_name
        else:
            model = others[name].student
            result = train_phase("subset_kd", others[name], task, task.x,
                                 task.y, cfg, lr, seed + 1, FLAGS.output_dir,
                                 {}, host_augment)
            arch = student_name
        params, size = model_size(model)
        rows.append((name, result, arch, params, size))
        report[name] = dict(result, arch=arch, params=params, size_bytes=size)
    result = train_phase("skd", distiller, task, task.x, task.y, cfg, lr,
                         seed + 1, FLAGS.output_dir, {}, host_augment)
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
        "resolved": dict(cfg, lr=lr, skd_weights={k: w for k, _, w in terms}),
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
