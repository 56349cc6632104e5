"""`distill_lm`'s absl flags and what `--method` builds."""

from absl import flags

FLAGS = flags.FLAGS

# `--method`: the logit divergence of each, and whether it adds hidden
# states (`+hidden`) or reads a top-k record (`topk`).
METHODS = {
    "kd": "kl",
    "reverse_kl": "reverse_kl",
    "jsd": "jsd",
    "kd+hidden": "kl",
    "topk": "kl",
}


def define_flags():
    """Every flag of `distill_lm`."""
    _define_run_flags()
    _define_model_flags()
    _define_method_flags()


def _define_run_flags():
    flags.DEFINE_string(
        "output_dir",
        "runs/distill_lm",
        "Where checkpoints, logs, models, flags.json and results.json go. "
        "Rerunning the same command resumes an interrupted run; a directory "
        "holding a run with other flags is refused unless --overwrite.",
    )
    flags.DEFINE_bool("overwrite", False, "Delete --output_dir's run first.")
    flags.DEFINE_integer("seed", 0, "Seeds the models, the batch order, sampling.")
    flags.DEFINE_integer(
        "max_train_tokens", 200_000, "Training tokens (bytes) of the corpus."
    )
    flags.DEFINE_integer(
        "teacher_train_tokens",
        None,
        "Training tokens of the teacher: the first ones of the training "
        "split, of which the student's --max_train_tokens are the start "
        "(a teacher that has read more than the distillation set, as a "
        "pretrained one has). Default: --max_train_tokens.",
    )
    flags.DEFINE_integer(
        "max_eval_tokens",
        20_000,
        "Tokens of the validation split and of the held-out test split each.",
    )
    flags.DEFINE_integer("sequence_length", 128, "Tokens per training window.")
    flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
    flags.DEFINE_integer("epochs", 3, "Epochs of the student (alone and distilled).")
    flags.DEFINE_integer("teacher_epochs", 4, "Epochs of the teacher.")
    flags.DEFINE_float(
        "lr",
        3e-3,
        "Peak Adam learning rate (5 % warm-up, cosine decay), every phase "
        "(1e-2 trained faster at first but erratically: loss spikes that "
        "made seeds and methods incomparable).",
    )
    flags.DEFINE_bool("baseline", True, "Also train the student alone (cross-entropy).")
    flags.DEFINE_bool(
        "jit_compile",
        None,
        "Compile train steps with XLA (default: on for JAX only).",
    )
    flags.DEFINE_integer("verbose", 1, "0: quiet; 1: a line per epoch.")


def _define_model_flags():
    flags.DEFINE_string(
        "teacher",
        None,
        "A trained teacher .keras file (a keras_hub causal LM over the 257 "
        "byte tokens) to load instead of training one.",
    )
    flags.DEFINE_integer("teacher_layers", 4, "GPT-2 layers of the teacher.")
    flags.DEFINE_integer("teacher_width", 128, "Hidden size of the teacher.")
    flags.DEFINE_integer("student_layers", 2, "GPT-2 layers of the student.")
    flags.DEFINE_integer("student_width", 64, "Hidden size of the student.")
    flags.DEFINE_float("dropout", 0.0, "Dropout of both GPT-2 models.")


def _define_method_flags():
    flags.DEFINE_enum(
        "method",
        "kd",
        list(METHODS),
        "kd: forward KL to the teacher per token; reverse_kl; jsd: GKD's "
        "generalized JSD (--beta); kd+hidden: kd plus the last hidden "
        "states through a learned projection (--hidden_weight); topk: kd "
        "from a recorded top-k teacher (--teacher_cache, --top_k).",
    )
    flags.DEFINE_float("temperature", 1.0, "Temperature of the divergence.")
    flags.DEFINE_float(
        "beta", 0.5, "jsd: the teacher's share of the mixture (TRL's beta)."
    )
    flags.DEFINE_float(
        "ce_weight",
        None,
        "Weight of the cross-entropy (the rest goes to the distillation "
        "terms). Default 0.5, or 0 with on-policy batches (GKD trains on "
        "the divergence alone).",
    )
    flags.DEFINE_float(
        "hidden_weight", 1.0, "kd+hidden: weight of the hidden-state term."
    )
    flags.DEFINE_float(
        "on_policy_fraction",
        0.0,
        "λ (GKD's lmbda): the seeded share of batches whose continuations "
        "the student samples and the teacher scores (keras_kd.on_policy).",
    )
    flags.DEFINE_integer(
        "prompt_length",
        None,
        "On-policy batches keep this many tokens of each window as the "
        "prompt (default: half of --sequence_length).",
    )
    flags.DEFINE_float(
        "sample_temperature", 1.0, "Temperature of the student's sampling."
    )
    flags.DEFINE_string(
        "teacher_cache",
        None,
        "topk: a directory for the teacher's recorded top-k targets "
        "(recorded once, then replayed instead of running the teacher).",
    )
    flags.DEFINE_integer("top_k", 32, "topk: tokens recorded per position.")
