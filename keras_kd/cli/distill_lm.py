"""`distill_lm`: a GPT-2 teacher, the student alone and distilled, on the
standard library's source (`keras_kd.cli.lm_corpus`), offline.

Phases (each resumable, `keras_kd.cli.lm_training`): the teacher (trained,
or loaded with `--teacher`), the student alone (cross-entropy), the
distilled student (`--method`, with `--on_policy_fraction` of on-policy
batches, `keras_kd.on_policy`). `results.json` holds each model's held-out
test perplexity, throughput, the corpus fingerprint and the command.
"""

import os
import shlex
import sys
import time

from absl import app

import keras_kd as kd
from keras_kd.cli import lm_corpus
from keras_kd.cli import lm_topk
from keras_kd.cli import lm_training
from keras_kd.cli.common import RecipeError
from keras_kd.cli.lm_flags import FLAGS
from keras_kd.cli.lm_flags import METHODS
from keras_kd.cli.lm_flags import define_flags
from keras_kd.cli.report import model_size
from keras_kd.cli.run_dir import prepare_output_dir
from keras_kd.cli.run_dir import run_flags
from keras_kd.cli.run_dir import write_results

RECIPE = "distill_lm"


def _jit_compile():
    import keras

    if FLAGS.jit_compile is not None:
        return FLAGS.jit_compile
    return keras.backend.backend() == "jax"


def _log(message):
    if FLAGS.verbose:
        print(message, flush=True)


def _check_flags():
    """Flag values refused before anything is read or built."""
    positive = (
        "max_train_tokens",
        "teacher_train_tokens",
        "max_eval_tokens",
        "sequence_length",
        "batch_size",
        "epochs",
        "teacher_epochs",
        "teacher_layers",
        "teacher_width",
        "student_layers",
        "student_width",
    )
    for name in positive:
        if FLAGS[name].value is not None and FLAGS[name].value < 1:
            raise RecipeError(f"--{name} must be positive, got {FLAGS[name].value}.")
    if (FLAGS.teacher_train_tokens or FLAGS.max_train_tokens) < FLAGS.max_train_tokens:
        raise RecipeError(
            f"--teacher_train_tokens={FLAGS.teacher_train_tokens} is below "
            f"--max_train_tokens={FLAGS.max_train_tokens}: the students read "
            "the start of the teacher's training tokens."
        )
    if not 0.0 <= FLAGS.on_policy_fraction <= 1.0:
        raise RecipeError(
            f"--on_policy_fraction must be in [0, 1], got {FLAGS.on_policy_fraction}."
        )
    if FLAGS.on_policy_fraction > 0 and FLAGS.ce_weight:
        raise RecipeError(
            "--ce_weight must be 0 with on-policy batches: cross-entropy on "
            "the student's own samples teaches it its own mistakes (GKD "
            "trains on the divergence alone)."
        )
    if FLAGS.prompt_length is not None and not (
        0 < FLAGS.prompt_length < FLAGS.sequence_length
    ):
        raise RecipeError(
            f"--prompt_length must be in 1..{FLAGS.sequence_length - 1}, "
            f"got {FLAGS.prompt_length}."
        )
    if (FLAGS.method == "topk") != bool(FLAGS.teacher_cache):
        raise RecipeError(
            "--method=topk and --teacher_cache go together: the top-k "
            "targets are recorded in --teacher_cache."
        )
    if FLAGS.method == "topk" and FLAGS.on_policy_fraction > 0:
        raise RecipeError(
            "--method=topk replays recorded targets, but on-policy batches "
            "need the live teacher to score the student's samples."
        )
    if not 0 < FLAGS.top_k <= lm_corpus.VOCABULARY_SIZE:
        raise RecipeError(
            f"--top_k must be in 1..{lm_corpus.VOCABULARY_SIZE}, got {FLAGS.top_k}."
        )


def ce_weight():
    """`--ce_weight`, or its default: 0.5, 0 with on-policy batches."""
    if FLAGS.ce_weight is not None:
        return FLAGS.ce_weight
    return 0.0 if FLAGS.on_policy_fraction > 0 else 0.5


def build_terms(method, teacher, student, temperature=1.0, beta=0.5, hidden_weight=1.0):
    """`(terms, weights)` of `method` (a `--method`) between two keras_hub
    GPT-2 models.

    Example:

    ```python
    terms, weights = build_terms("kd+hidden", teacher, student)
    ```
    """
    if method == "topk":  # Read from the record by a RecordedTeacher.
        return [kd.losses.SparseKLDistillation(temperature)], [1.0]
    terms = [
        kd.losses.LogitsDistillation(temperature, divergence=METHODS[method], beta=beta)
    ]
    weights = [1.0]
    if method.endswith("+hidden"):
        terms.append(
            kd.losses.FeatureDistillation(
                _last_layer(teacher), _last_layer(student), projection=True
            )
        )
        weights.append(hidden_weight)
    return terms, weights


def _last_layer(model):
    """The last transformer block of a keras_hub GPT-2 (its hidden states)."""
    return f"transformer_layer_{model.backbone.num_layers - 1}"


class _LMDistillation:
    """One `distill_lm` run: flags resolved and models built in the
    constructor (bad flags fail before anything is written), `train` runs
    the phases, `report` writes `results.json`."""

    def __init__(self):
        self.start = time.perf_counter()
        _check_flags()
        self.seed = FLAGS.seed
        self.ce_weight = ce_weight()
        self.corpus = self._load_corpus()
        self.windows = lm_corpus.split_windows(
            self.corpus, FLAGS.sequence_length, FLAGS.max_train_tokens
        )
        self.steps = len(self._batches("train", 0))
        self.teacher, self.teacher_loaded = self._teacher()
        self.student = self._student()
        self.baseline = self._student() if FLAGS.baseline else None
        self.terms, self.term_weights = build_terms(
            FLAGS.method,
            self.teacher,
            self.student,
            FLAGS.temperature,
            FLAGS.beta,
            FLAGS.hidden_weight,
        )
        self.cache_report = None
        # topk: built on the record, once the teacher is trained.
        self.distiller = None if FLAGS.teacher_cache else self._distiller(self.teacher)

    def _distiller(self, teacher):
        try:
            return kd.Distiller(
                teacher,
                self.student,
                self.terms,
                distillation_loss_weights=self.term_weights,
                student_loss_weight=self.ce_weight,
            )
        except ValueError as e:
            raise RecipeError(f"--method={FLAGS.method}: {e}") from None

    def _load_corpus(self):
        budgets = lm_corpus.split_budgets(
            FLAGS.max_train_tokens, FLAGS.max_eval_tokens, FLAGS.teacher_train_tokens
        )
        try:
            return lm_corpus.load_corpus(budgets)
        except ValueError as e:
            raise RecipeError(str(e)) from None

    def _batches(self, split, first_epoch, batch_size=None):
        windows, mask = self.windows[split]
        return lm_corpus.TokenBatches(
            windows,
            mask,
            batch_size or FLAGS.batch_size,
            seed=self.seed,
            first_epoch=first_epoch,
            shuffle=split.endswith("train"),
        )

    def _teacher(self):
        """`(teacher, loaded)`: `--teacher` loaded and checked, or a new
        GPT-2 to train."""
        if not FLAGS.teacher:
            model = lm_training.gpt2(
                FLAGS.teacher_layers,
                FLAGS.teacher_width,
                FLAGS.sequence_length,
                "teacher",
                self.seed,
                FLAGS.dropout,
            )
            return model, False
        return _load_teacher(FLAGS.teacher, FLAGS.sequence_length), True

    def _student(self):
        """A fresh student (the same initial weights each call)."""
        return lm_training.gpt2(
            FLAGS.student_layers,
            FLAGS.student_width,
            FLAGS.sequence_length,
            "student",
            self.seed + 1,
            FLAGS.dropout,
        )

    def _validation(self, model):
        return lm_training.perplexity(model, self._batches("validation", 0, 64))[0]

    def _fit(self, name, model, epochs, make_batches, evaluated=None, steps=None):
        """Trains `model` (a phase of `steps` per epoch, default the
        student's); validates `evaluated` (default: it)."""
        steps = steps or self.steps
        lm_training.compile_lm(model, FLAGS.lr, epochs * steps, _jit_compile())
        return lm_training.fit_phase(
            name,
            model,
            make_batches,
            epochs,
            FLAGS.output_dir,
            validation=lambda _: self._validation(evaluated or model),
            log=_log,
        )

    def train(self):
        """Writes `flags.json`, then runs every phase (each resumable)."""
        prepare_output_dir(RECIPE)
        info = self.corpus.info()
        _log(
            f"Corpus: {info['tokens']} tokens of {info['files']} standard "
            f"library files (fingerprint {info['fingerprint'][:12]})."
        )
        self.teacher_result = self._train_teacher()
        self.baseline_result = None
        if self.baseline is not None:
            self.baseline_result = self._fit(
                "student_alone",
                self.baseline,
                FLAGS.epochs,
                lambda first: self._batches("train", first),
            )
        if FLAGS.teacher_cache:
            self.cache_report = self._record()
        self.distilled_result = self._fit(
            "distilled",
            self.distiller,
            FLAGS.epochs,
            self._distilled_batches,
            evaluated=self.student,
        )
        self.student_path = os.path.join(FLAGS.output_dir, "student.keras")
        self.student.save(self.student_path)

    def _train_teacher(self):
        if self.teacher_loaded:
            return {"loaded_from": FLAGS.teacher}
        self.teacher.trainable = True  # The Distiller froze it.
        result = self._fit(
            "teacher",
            self.teacher,
            FLAGS.teacher_epochs,
            lambda first: self._batches("teacher_train", first),
            steps=len(self._batches("teacher_train", 0)),
        )
        self.teacher.compile()  # Saved without the training optimizer's state.
        self.teacher.save(os.path.join(FLAGS.output_dir, "teacher.keras"))
        self.teacher.trainable = False
        return result

    def _record(self):
        """topk: records the teacher's top-k (or reuses the record) and
        builds the Distiller on it."""
        try:
            lm_topk.record(
                self.teacher,
                self.windows["train"],
                self.corpus.fingerprint,
                FLAGS.teacher_cache,
                FLAGS.top_k,
            )
        except ValueError as e:
            raise RecipeError(f"--teacher_cache={FLAGS.teacher_cache}: {e}") from None
        self.distiller = self._distiller(
            kd.offline.RecordedTeacher(FLAGS.teacher_cache)
        )
        return lm_topk.report(FLAGS.teacher_cache, FLAGS.top_k)

    def _distilled_batches(self, first_epoch):
        if FLAGS.teacher_cache:
            return lm_topk.ReplayEpochs(
                self.windows["train"],
                FLAGS.teacher_cache,
                self.corpus.fingerprint,
                FLAGS.batch_size,
                FLAGS.epochs,
                seed=self.seed,
                first_epoch=first_epoch,
                teacher=self.teacher,
            )
        batches = self._batches("train", first_epoch)
        if FLAGS.on_policy_fraction == 0:
            return batches
        return kd.on_policy.OnPolicyBatches(
            batches,
            self.student,
            fraction=FLAGS.on_policy_fraction,
            prompt_length=FLAGS.prompt_length or FLAGS.sequence_length // 2,
            temperature=FLAGS.sample_temperature,
            seed=self.seed,
            first_epoch=first_epoch,
        )

    def report(self):
        """Test perplexities, a table and `results.json`."""
        models = {"teacher": self._entry(self.teacher, self.teacher_result)}
        if self.baseline is not None:
            models["student_alone"] = self._entry(self.baseline, self.baseline_result)
        models["distilled"] = self._entry(
            self.student, self.distilled_result, saved_to=self.student_path
        )
        _print_table(models, FLAGS.method)
        results = {
            "recipe": RECIPE,
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "flags": run_flags(RECIPE),
            "resolved": self._resolved(),
            "corpus": self.corpus.info(),
            "teacher_cache": self.cache_report,
            "models": models,
            "wall_seconds": time.perf_counter() - self.start,
            "loadavg": list(os.getloadavg()),
        }
        write_results(results)
        return results

    def _entry(self, model, result, **extra):
        ppl, nll, tokens = lm_training.perplexity(model, self._batches("test", 0, 64))
        params, size = model_size(model)
        return dict(
            result,
            perplexity=ppl,
            nll=nll,
            test_tokens=tokens,
            arch=f"gpt2 {model.backbone.num_layers}x{model.backbone.hidden_dim}",
            params=params,
            size_bytes=size,
            **extra,
        )

    def _resolved(self):
        import keras

        return {
            "backend": keras.backend.backend(),
            "jit_compile": _jit_compile(),
            "ce_weight": self.ce_weight,
            "terms": [type(t).__name__ for t in self.terms],
            "term_weights": self.term_weights,
            "steps_per_epoch": self.steps,
            "prompt_length": (
                FLAGS.prompt_length or FLAGS.sequence_length // 2
                if FLAGS.on_policy_fraction
                else None
            ),
            "vocabulary_size": lm_corpus.VOCABULARY_SIZE,
        }


def _load_teacher(path, sequence_length):
    """A `.keras` causal LM over the byte vocabulary, checked."""
    import keras

    if not os.path.exists(path):
        raise RecipeError(f"--teacher={path}: no such file.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many kinds here.
        raise RecipeError(
            f"--teacher={path} is not a loadable .keras model: {e}"
        ) from None
    backbone = getattr(model, "backbone", None)
    vocab = getattr(backbone, "vocabulary_size", None)
    if vocab != lm_corpus.VOCABULARY_SIZE:
        raise RecipeError(
            f"--teacher={path} has vocabulary {vocab}; distill_lm's byte "
            f"tokens need a keras_hub causal LM over "
            f"{lm_corpus.VOCABULARY_SIZE} tokens."
        )
    longest = getattr(backbone, "max_sequence_length", sequence_length)
    if longest < sequence_length:
        raise RecipeError(
            f"--teacher={path} reads at most {longest} tokens, fewer than "
            f"--sequence_length={sequence_length}."
        )
    return model


def _print_table(models, method):
    rows = [("model", "arch", "test perplexity", "params", "tokens/s")]
    names = {"distilled": f"student + {method}", "student_alone": "student alone"}
    for key, entry in models.items():
        speed = entry.get("tokens_per_second")
        rows.append(
            (
                names.get(key, key),
                entry["arch"],
                f"{entry['perplexity']:.3f}",
                f"{entry['params']:,}",
                f"{speed:,.0f}" if speed else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def distill_lm_main(argv):
    """Teacher, the student alone and distilled; `results.json`."""
    del argv
    run = _LMDistillation()
    run.train()
    return run.report()


def main():
    """`keras-kd-distill-lm`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(
                f"Unexpected arguments {argv[1:]}; every option is a --flag."
            )
        try:
            distill_lm_main(argv)
        except RecipeError as e:
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
