"""The recipes' absl flags (defaults come from `keras_kd.cli.protocols`)."""

from absl import flags

from keras_kd import presets

FLAGS = flags.FLAGS
# Training flags (defined by `define_common_flags`, `define_teacher_flags`,
# `define_student_flags`): never read as a preset's hyper-parameter (CRD's
# memory `momentum` is not SGD's `--momentum`).
TRAINING_FLAGS = set()


def define_common_flags(default_output_dir):
    """Dataset, training protocol, output and export flags of every recipe."""
    before = set(FLAGS)
    _define_data_flags()
    _define_output_flags(default_output_dir)
    _define_optimizer_flags()
    _define_input_flags()
    _define_execution_flags()
    TRAINING_FLAGS.update(set(FLAGS) - before)


def _define_data_flags():
    """`--dataset`, `--data_dir` and the `--protocol` giving defaults."""
    flags.DEFINE_string(
        "dataset",
        "digits",
        "'digits' (scikit-learn's 8x8 digits, bundled, offline), 'npz:PATH' "
        "(a folder with train.npz and test.npz holding uint8 'x' NHWC and "
        "integer 'y'), or a tensorflow-datasets name (e.g. cifar100) read "
        "from --data_dir.",
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "tensorflow-datasets data directory (default: "
        "tfds' own, ~/tensorflow_datasets).",
    )
    flags.DEFINE_enum(
        "protocol",
        "auto",
        ["auto", "digits", "cifar", "fashion", "reffakd_fashion"],
        "Training protocol giving the defaults of unset training flags: "
        "'digits' (Adam 3e-3, 120 epochs, low-data student), 'cifar' "
        "(docs/methods.md §6: SGD 0.05, step schedule, L2 5e-4, crop+flip), "
        "'fashion' (28x28 Fashion-MNIST: cifar's recipe, 30 epochs, ×0.1 at "
        "50/75%, batch 128, fashion_cnn_large → fashion_cnn_small), "
        "'reffakd_fashion' (ReffAKD's official Fashion-MNIST notebooks, "
        "docs/methods.md §5: images resized to 32x32, SGD 0.1, 200 epochs, "
        "×0.2 at 30/60/80%, batch 128, L2 5e-4, flip + ±15° rotation, "
        "student lenet5_bn). "
        "'auto': 'digits' for --dataset=digits, 'cifar' otherwise.",
    )


def _define_output_flags(default_output_dir):
    """`--output_dir` and `--overwrite`."""
    flags.DEFINE_string(
        "output_dir",
        default_output_dir,
        "Where checkpoints, logs (CSV, TensorBoard), models, flags.json and "
        "results.json go. Rerunning the same command resumes an interrupted "
        "run; a directory holding a run with other flags is refused unless "
        "--overwrite.",
    )
    flags.DEFINE_bool(
        "overwrite", False, "Delete what --output_dir holds and start over."
    )


def _define_optimizer_flags():
    """Epochs, batch size, optimizer and learning-rate schedule."""
    flags.DEFINE_integer(
        "epochs",
        None,
        "Training epochs (protocol default: 120 digits, 240 cifar, 30 fashion, "
        "200 reffakd_fashion).",
    )
    flags.DEFINE_integer(
        "batch_size",
        None,
        "Batch size (protocol default: 32 digits, 64 cifar, 128 fashion and "
        "reffakd_fashion).",
    )
    flags.DEFINE_enum(
        "optimizer",
        None,
        ["sgd", "adam"],
        "Optimizer (protocol default: adam digits, sgd otherwise).",
    )
    flags.DEFINE_float(
        "lr",
        None,
        "Learning rate (protocol default: 3e-3 digits; 0.05 fashion and "
        "cifar, 0.01 for a mobilenetv2 student; 0.1 reffakd_fashion).",
    )
    flags.DEFINE_float("momentum", None, "SGD momentum (protocol default: 0.9).")
    flags.DEFINE_float(
        "weight_decay",
        None,
        "Coupled L2 weight decay as PyTorch SGD's weight_decay: wd·w added "
        "to the gradient of every trainable variable (student, terms' heads, "
        "BN γ/β, biases; keras_kd.optimizers) (protocol default: 0 digits, "
        "5e-4 otherwise).",
    )
    flags.DEFINE_list(
        "lr_decay_epochs",
        None,
        "Epochs at which the learning rate is multiplied by 0.1 (0.2 for "
        "reffakd_fashion) (protocol default: none for digits; "
        "62.5%/75%/87.5% of --epochs for cifar, i.e. 150,180,210 of 240; "
        "50%/75% for fashion; 30%/60%/80% for reffakd_fashion). Unset, "
        "teachers decay at the same fractions of --teacher_epochs.",
    )


def _define_input_flags():
    """Augmentation, the host input pipeline and `--train_limit`."""
    flags.DEFINE_bool(
        "augment",
        None,
        "Random crop (4-pixel zero padding) and horizontal flip of training "
        "images; for reffakd_fashion, horizontal flip and rotation within "
        "±15° (always on the device) (protocol default: off digits, on "
        "cifar, fashion and reffakd_fashion).",
    )
    flags.DEFINE_bool(
        "augment_on_device",
        False,
        "Augment inside the compiled train step with the keras.ops "
        "RandomCropFlip layer (the Distiller's `augmentation` argument) "
        "instead of in the host input pipeline.",
    )
    flags.DEFINE_enum(
        "input_pipeline",
        "auto",
        ["auto", "tfdata", "numpy"],
        "Host input pipeline: 'tfdata' (tf.data, needs TensorFlow), 'numpy' "
        "(a keras.utils.PyDataset with NumPy crop+flip in worker threads; "
        "no TensorFlow needed; same batch order per seed and epoch, other "
        "random crops), 'auto' (tfdata where TensorFlow is installed, else "
        "numpy).",
    )
    flags.DEFINE_integer(
        "input_workers", 4, "Threads preparing --input_pipeline=numpy batches."
    )
    flags.DEFINE_integer(
        "train_limit",
        None,
        "Train the student(s) on the first N training images only (0: all). "
        "Teachers always use the whole training split. Protocol default: "
        "100 digits (a low-data regime), 0 cifar and fashion.",
    )


def _define_execution_flags():
    """Precision, XLA, seed, export, verbosity and distribution."""
    flags.DEFINE_enum(
        "mixed_precision",
        "float32",
        ["float32", "mixed_float16", "mixed_bfloat16"],
        "dtype policy of the student(s); teachers stay float32 and losses "
        "are computed in float32.",
    )
    flags.DEFINE_bool(
        "jit_compile",
        None,
        "Compile train steps with XLA (default: on for JAX, whose steps "
        "otherwise run op by op; off on TensorFlow and PyTorch).",
    )
    flags.DEFINE_integer("seed", 0, "Random seed (models, data order).")
    flags.DEFINE_list(
        "export",
        [],
        "Export the final student: any of saved_model,tflite. Output "
        "parity against Keras is checked and reported.",
    )
    flags.DEFINE_enum(
        "tflite_quantization",
        None,
        ["float16", "dynamic_range", "int8"],
        "Post-training quantisation of the TFLite export (default: none, "
        "float32); int8 is calibrated on test images.",
    )
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity (0, 1, 2).")
    flags.DEFINE_enum(
        "distribution",
        "none",
        ["none", "mirrored", "multi_worker", "data_parallel"],
        "Train across devices (keras_kd.distribute): mirrored (every device "
        "of this machine, TensorFlow), multi_worker (TF_CONFIG, TensorFlow), "
        "data_parallel (keras.distribution, JAX). --batch_size is per "
        "replica; the learning rate is scaled linearly with the global "
        "batch.",
    )


def define_teacher_flags(multiple=True):
    """`--teacher` (zoo names or .keras paths) and teacher training flags."""
    before = set(FLAGS)
    if multiple:
        flags.DEFINE_list(
            "teacher",
            None,
            "Teacher(s): comma-separated zoo model names (trained on the "
            "whole training split in this run) or paths to trained .keras "
            "models (loaded). Several teachers give multi-teacher "
            "distillation. Protocol default: digits_cnn_large (digits), "
            "resnet32x4 (cifar), fashion_cnn_large (fashion, reffakd_fashion).",
        )
        flags.DEFINE_list(
            "teacher_weights", None, "One positive weight per teacher (default: equal)."
        )
    flags.DEFINE_integer(
        "teacher_epochs",
        None,
        "Epochs for teachers trained in this run (protocol default: 30 "
        "digits and fashion, --epochs cifar and reffakd_fashion).",
    )
    TRAINING_FLAGS.update(set(FLAGS) - before)


def define_teacher_input_flags():
    """`--teacher_inputs` and `--allow_weak_teacher` (loaded teachers)."""
    before = set(FLAGS)
    flags.DEFINE_enum(
        "teacher_inputs",
        "auto",
        ["auto", "raw", "normalized"],
        "What a --teacher loaded from a file is fed: 'raw' (0..255 pixels, "
        "the student's normalisation undone in the train step), "
        "'normalized' (the student's inputs), 'auto' (raw when its graph "
        "starts with a Rescaling or Normalization layer, else normalized). "
        "A teacher of another input size is also resized to it.",
    )
    flags.DEFINE_bool(
        "allow_weak_teacher",
        False,
        "Distil from a loaded teacher even when its test accuracy is less "
        "than 5 points above chance (by default the run stops before "
        "training).",
    )
    TRAINING_FLAGS.update(set(FLAGS) - before)


def define_student_flags(baseline=True):
    """`--student` and, with `baseline`, `--baseline`."""
    before = set(FLAGS)
    flags.DEFINE_string(
        "student",
        None,
        "Student: a zoo model name (see keras_kd.models.MODELS) or a path "
        "to a .keras model used as the initial weights. Protocol default: "
        "digits_cnn_small (digits), resnet8x4 (cifar), fashion_cnn_small "
        "(fashion), lenet5_bn (reffakd_fashion).",
    )
    if baseline:
        flags.DEFINE_bool(
            "baseline",
            True,
            "Also train the student alone (CE only) with the same protocol "
            "and report it beside the distilled student.",
        )
    TRAINING_FLAGS.update(set(FLAGS) - before)


def define_method_flags(default_method="kd"):
    """`--method` and every method's hyper-parameters (docs/methods.md)."""
    flags.DEFINE_string(
        "method",
        default_method,
        f"Distillation method (a kd.presets name), or several joined by '+' "
        f"(e.g. kd+fa): {', '.join(presets.names())}. "
        + " ".join(f"{name}: {presets.get(name).help}" for name in presets.names()),
    )
    flags.DEFINE_multi_string(
        "hparam",
        [],
        "A preset hyper-parameter as name=value (repeatable), e.g. "
        "--hparam=beta=6 --hparam=warmup_epochs=5 for dkd; the value is a "
        "Python literal (number, True/False, None, list, quoted string) or "
        "a bare word taken as a string. Overrides the per-method flags, and "
        "the epoch schedules (warmup_epochs, lambda_epochs: the official "
        "value × --epochs/240, rounded, at least 1); "
        "every preset's hyper-parameters are listed in its docs/methods "
        "page and in kd.presets.get(name).defaults.",
    )
    flags.DEFINE_float(
        "ce_weight",
        None,
        "Weight of the students' cross-entropy. Default: 0.1 for kd alone "
        "(0.1·CE + 0.9·KD, docs/methods.md §0; 0.5 on digits), 1 - "
        "reffakd_alpha for reffakd, 1 otherwise (CE + Σ w·term).",
    )
    define_kd_flags()
    flags.DEFINE_float(
        "kd_weight",
        None,
        "Weight α of the Hinton KD term, also when added to fa, afd, rtk "
        "(protocol default: 0.9 cifar and fashion, 0.5 digits).",
    )
    _define_feature_flags()
    _define_reffakd_flags()
    define_skd_flags()
    _define_dlkd_flags()


def _define_feature_flags():
    """FitNets, AT, FA, AFD and RTK flags."""
    flags.DEFINE_string(
        "teacher_layer",
        None,
        "Teacher layer for fitnets/fa (default: its last stage, e.g. "
        "'stage3', before pooling).",
    )
    flags.DEFINE_string(
        "student_layer", None, "Student layer for fitnets/fa (default: its last stage)."
    )
    flags.DEFINE_float(
        "fitnets_weight", None, "FitNets weight (default: the protocol's; §0: 100)."
    )
    flags.DEFINE_float(
        "at_weight",
        None,
        "Attention transfer weight (default: the protocol's; §0: 1000).",
    )
    flags.DEFINE_float(
        "fa_weight",
        None,
        "FA weight β of mean((g(F_s) − F_t)²) (default: the protocol's; §1: "
        "FitNets' 100).",
    )
    flags.DEFINE_enum(
        "fa_aligner",
        "nonlinear",
        ["nonlinear", "linear"],
        "FA aligner g: Conv1x1-BN-ReLU-Conv1x1, or Conv1x1-BN (= FitNets).",
    )
    flags.DEFINE_float(
        "afd_weight", None, "AFD/RTK weight (default: the protocol's; §4: 200)."
    )
    flags.DEFINE_integer("afd_qk_dim", 128, "AFD/RTK query/key size d (§4).")
    flags.DEFINE_integer("rtk_num_keys", 2, "RTK: keys kept per query (top-k, §4).")
    flags.DEFINE_enum(
        "rtk_query_side",
        "student",
        ["student", "teacher"],
        "RTK: which network's features query (§4).",
    )


def _define_reffakd_flags():
    """ReffAKD's flags (docs/methods.md §5)."""
    flags.DEFINE_float(
        "reffakd_alpha",
        0.9,
        "ReffAKD α: (1−α)·CE + α·T²·KL(P[y] ‖ softmax(z_s/T)) (§5).",
    )
    flags.DEFINE_float(
        "reffakd_temperature",
        5.0,
        "ReffAKD temperature T (the paper searches 20, 10, 5, 1; §5).",
    )
    flags.DEFINE_integer(
        "reffakd_ae_epochs",
        None,
        "ReffAKD autoencoder epochs (default: 200 as the paper, 30 digits).",
    )
    flags.DEFINE_integer(
        "reffakd_per_class",
        40,
        "ReffAKD: images sampled per class for the class similarity (§5).",
    )
    flags.DEFINE_float(
        "reffakd_diagonal",
        0.0225,
        "ReffAKD: added to the similarity diagonal (0.008 for Fashion-MNIST; §5).",
    )
    flags.DEFINE_string(
        "reffakd_soft_labels",
        None,
        "ReffAKD: a folder of soft-label tables, one per training data, "
        "seed and autoencoder flags; a run reads the one made with its own, "
        "else trains it and writes it there (a T, α sweep trains once).",
    )


def _define_dlkd_flags():
    """DLKD's term weights (docs/methods.md §3)."""
    flags.DEFINE_float(
        "dlkd_correlation_weight", 50.0, "DLKD weight of L_corr (§3; ImageNet: 20)."
    )
    flags.DEFINE_float(
        "dlkd_contrastive_weight", 1.0, "DLKD weight of L_sup (§3; ImageNet: 0.5)."
    )
    flags.DEFINE_float(
        "dlkd_alignment_weight", 20.0, "DLKD weight of L_align (§3; ImageNet: 10)."
    )


def define_teacher_cache_flags():
    """`--teacher_cache`: offline distillation from recorded targets."""
    flags.DEFINE_string(
        "teacher_cache",
        None,
        "Folder of a kd.offline record of the teachers' logits on the "
        "student's training stream (crop + flip as the protocol augments, "
        "one draw per --epochs). Recorded when missing, reused when its "
        "manifest matches this run (teacher weights, data, augmentation, "
        "seed, epochs), refused otherwise; the student then trains without "
        "running the teacher. Logit methods only (docs/methods.md §10).",
    )
    flags.DEFINE_bool(
        "overwrite_teacher_cache",
        False,
        "Delete the --teacher_cache record and record it again (--overwrite "
        "concerns --output_dir only).",
    )


def define_kd_flags():
    """`--kd_temperature`."""
    flags.DEFINE_float(
        "kd_temperature", None, "Hinton KD temperature T (protocol default: 4)."
    )


def define_skd_flags():
    """SKD's flags (docs/methods.md §2)."""
    flags.DEFINE_float(
        "skd_weight",
        None,
        "SKD weight β of each stage's term (default: the protocol's; §2: 100).",
    )
    flags.DEFINE_enum(
        "skd_aligner",
        "linear",
        ["linear", "nonlinear"],
        "SKD adapter: Conv1x1+BN (linear) or the FA aligner (§2).",
    )
    flags.DEFINE_list(
        "skd_layers",
        None,
        "SKD: layers distilled, same names in teacher and student (default: "
        "every stage, e.g. stage1,stage2,stage3).",
    )


def define_specialize_flags():
    """Flags of `recipes/specialize.py` (SKD, docs/methods.md §2)."""
    flags.DEFINE_list(
        "classes",
        None,
        "The task: class ids or names of --dataset to specialise to "
        "(default: 3,5,8 on digits, the first 5 classes otherwise).",
    )
    flags.DEFINE_integer(
        "images_per_class",
        None,
        "Training images per task class, picked at random with --seed "
        "(0: all). Protocol default: 10 digits, 0 cifar and fashion.",
    )
    flags.DEFINE_bool(
        "match_full_steps",
        False,
        "With --images_per_class: repeat the picked images to as many as "
        "the task classes have, so that every phase takes as many steps "
        "as on all of them (a data-size comparison at equal training).",
    )
    flags.DEFINE_list(
        "baselines",
        ["scratch", "finetune", "subset_kd"],
        "Baselines trained beside SKD on the same task data: scratch (the "
        "student alone), finetune (a copy of the teacher's backbone with a "
        "new head), subset_kd (logit KD against the teacher's softmax "
        "restricted to the task classes and renormalised, 0.1·CE + "
        "0.9·KD_S).",
    )


def set_flag_defaults(**defaults):
    """Changes the defaults of flags defined above (e.g. `export`)."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)
