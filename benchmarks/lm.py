"""Language-model distillation: held-out perplexity of every method, per seed.

For each seed, `recipes/distill_lm.py` trains the student alone and the kd
student (row `kd`), the first seed's run also the teacher that every seed
loads (`--teacher_per_seed`: one per seed); every other row distils the
same student (same initial weights and batch order) from that teacher
(`--teacher=.../kd/teacher.keras --nobaseline`):

- `teacher`: the teacher's own perplexity (from the kd run);
- `student_alone`: cross-entropy only (from the kd run);
- `kd`, `reverse_kl`, `jsd` (β 0.5), `kd+hidden`: the recipe's methods,
  cross-entropy weight 0.5;
- `topk`: kd from the teacher's recorded top-k tokens (`--top_k`);
- `on_policy`: kd with λ = 0.5 of on-policy batches (GKD: no
  cross-entropy), and `kd_no_ce`, kd without cross-entropy, its control;
- `keras_distillation`: `keras.distillation.Distiller` with
  `keras.distillation.LogitsDistillation(T, loss=KLDivergence())`, the
  same models, data, optimizer and loop (`keras_kd.cli.lm_training`); it
  ignores sample weights, so padding counts. (Its default
  `loss="kl_divergence"` reads logits as probabilities; optional row
  `keras_default`.)

The report gives each row's held-out perplexity, mean ± sample std over
seeds, and the paired difference to kd per seed; and the tokens/s of kd's
`kd.Distiller` and `keras.distillation.Distiller` measured in this process,
round-robin, with `os.getloadavg()` before and after. Rerunning resumes:
finished rows are read from `--runs_dir`, unfinished ones resume. Files:
`<output_dir>/lm_<date>.{json,md}`, rewritten after every row.

    python benchmarks/lm.py                       # 3 seeds, recipe defaults
    python benchmarks/lm.py --seeds=0 --epochs=2  # a smaller budget
    python benchmarks/lm.py --smoke               # tiny, minutes on a CPU
"""

import datetime
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from lm_report import format_markdown  # noqa: E402
from lm_report import summarize  # noqa: E402
from report_files import summary  # noqa: E402
from report_files import versions  # noqa: E402
from report_files import write_outputs  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd.cli import lm_corpus  # noqa: E402
from keras_kd.cli import lm_training  # noqa: E402

FLAGS = flags.FLAGS
# Each row's recipe flags (None: computed in this process).
ROWS = {
    "teacher": None,
    "student_alone": None,
    "kd": ["--method=kd"],
    "reverse_kl": ["--method=reverse_kl"],
    "jsd": ["--method=jsd"],
    "kd+hidden": ["--method=kd+hidden"],
    "topk": ["--method=topk"],
    "on_policy": ["--method=kd", "--on_policy_fraction=0.5"],
    "kd_no_ce": ["--method=kd", "--ce_weight=0"],
    "keras_distillation": None,
}
OPTIONAL_ROWS = {"keras_default": None}
NOTES = {
    "teacher": "the teacher every row distils from",
    "student_alone": "cross-entropy alone",
    "topk": "kd from the recorded top-k tokens",
    "on_policy": "λ 0.5, divergence only (compare kd_no_ce)",
    "kd_no_ce": "kd without cross-entropy",
    "keras_distillation": "keras.distillation, KLDivergence(), padding counted",
    "keras_default": "keras.distillation's default loss='kl_divergence'",
}
SIZE_FLAGS = (
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
SMOKE = dict(
    max_train_tokens=6000,
    teacher_train_tokens=12000,
    max_eval_tokens=1500,
    sequence_length=32,
    batch_size=16,
    epochs=1,
    teacher_epochs=1,
    teacher_layers=1,
    teacher_width=32,
    student_layers=1,
    student_width=16,
)


def define_flags():
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (one teacher each).")
    flags.DEFINE_list(
        "rows", list(ROWS), f"Rows, of {list(ROWS) + list(OPTIONAL_ROWS)}."
    )
    flags.DEFINE_string("runs_dir", "runs/benchmark_lm", "The rows' run folders.")
    flags.DEFINE_string(
        "output_dir", os.path.join(ROOT, "benchmarks", "results"), "Report folder."
    )
    flags.DEFINE_bool("smoke", False, "Tiny models and corpus (a check).")
    flags.DEFINE_bool(
        "teacher_per_seed",
        False,
        "Train a teacher per seed; by default the first seed's kd run "
        "trains it and every later seed loads it (the seeds then vary the "
        "students' initial weights and batch order only).",
    )
    flags.DEFINE_integer("top_k", 32, "topk: tokens recorded per position.")
    flags.DEFINE_integer("throughput_steps", 10, "Steps per timed repeat.")
    flags.DEFINE_integer("throughput_repeats", 3, "Timed repeats, round-robin.")
    for name in SIZE_FLAGS:
        flags.DEFINE_integer(name, None, f"The recipe's --{name} (its default).")


def recipe_flags():
    """The size flags given to every row (`--smoke` fills unset ones)."""
    values = {name: FLAGS[name].value for name in SIZE_FLAGS}
    if FLAGS.smoke:
        values = {k: SMOKE[k] if v is None else v for k, v in values.items()}
    return [f"--{k}={v}" for k, v in values.items() if v is not None]


def _read(path):
    with open(path) as f:
        return json.load(f)


def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def run_recipe(row, seed, extra):
    """`recipes/distill_lm.py` for one row and seed (resumed if started);
    returns its results.json, or `{"error": ...}`."""
    out = os.path.join(FLAGS.runs_dir, f"seed{seed}", row)
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        return _read(path)
    command = [
        sys.executable,
        os.path.join(ROOT, "recipes", "distill_lm.py"),
        *recipe_flags(),
        f"--seed={seed}",
        f"--output_dir={out}",
        "--verbose=0",
        *extra,
    ]
    print(f"[seed {seed}] {row}: {shlex.join(command[1:])}", flush=True)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return _read(path)


def _row_args(row, seed, teacher):
    args = list(ROWS.get(row) or [])
    if row == "topk":
        record = os.path.join(FLAGS.runs_dir, f"seed{seed}", "topk_record")
        args += [f"--teacher_cache={record}", f"--top_k={FLAGS.top_k}"]
    return args + [f"--teacher={teacher}", "--nobaseline"]


def _record(row, seed, results, key="distilled"):
    if "error" in results:
        return {"row": row, "seed": seed, "error": results["error"]}
    entry = results["models"][key]
    return {
        "row": row,
        "seed": seed,
        "perplexity": entry["perplexity"],
        "tokens_per_second": entry.get("tokens_per_second"),
        "train_seconds": entry.get("train_seconds"),
    }


def _split_batches(windows, split, seed, first_epoch=0, batch_size=None):
    w, m = windows[split]
    return lm_corpus.TokenBatches(
        w, m, batch_size, seed=seed, first_epoch=first_epoch, shuffle=split == "train"
    )


def _setting(kd_results):
    """The kd run's corpus windows and flags, for in-process rows."""
    f = kd_results["flags"]
    budgets = lm_corpus.split_budgets(
        f["max_train_tokens"], f["max_eval_tokens"], f.get("teacher_train_tokens")
    )
    corpus = lm_corpus.load_corpus(budgets)
    if corpus.fingerprint != kd_results["corpus"]["fingerprint"]:
        raise RuntimeError("The corpus differs from the kd run's.")
    windows = lm_corpus.split_windows(
        corpus, f["sequence_length"], f["max_train_tokens"]
    )
    return f, windows


def _student(f, seed):
    """The recipe's student: the same initial weights for the same seed."""
    return lm_training.gpt2(
        f["student_layers"],
        f["student_width"],
        f["sequence_length"],
        "student",
        seed + 1,
        f["dropout"],
    )


def _keras_distiller(teacher, student, temperature, default_loss=False):
    loss = "kl_divergence" if default_loss else keras.losses.KLDivergence()
    term = keras.distillation.LogitsDistillation(temperature=temperature, loss=loss)
    return keras.distillation.Distiller(teacher, student, term, student_loss_weight=0.5)


def run_keras_row(row, seed, teacher_path, kd_results):
    """keras.distillation on the kd run's teacher, data and protocol."""
    out = os.path.join(FLAGS.runs_dir, f"seed{seed}", row)
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        return _read(path)
    print(f"[seed {seed}] {row} (in this process)", flush=True)
    f, windows = _setting(kd_results)
    teacher = keras.saving.load_model(teacher_path, compile=False)
    student = _student(f, seed)
    distiller = _keras_distiller(
        teacher, student, f["temperature"], row == "keras_default"
    )
    steps = len(_split_batches(windows, "train", seed, batch_size=f["batch_size"]))
    jit = kd_results["resolved"]["jit_compile"]
    lm_training.compile_lm(distiller, f["lr"], f["epochs"] * steps, jit)
    result = lm_training.fit_phase(
        "distilled",
        distiller,
        lambda first: _split_batches(windows, "train", seed, first, f["batch_size"]),
        f["epochs"],
        out,
        log=None,
    )
    test = _split_batches(windows, "test", seed, batch_size=64)
    ppl, nll, tokens = lm_training.perplexity(student, test)
    results = {"models": {"distilled": dict(result, perplexity=ppl, nll=nll)}}
    _write(path, results)
    return results


def measure_throughput(kd_dir, kd_results):
    """Tokens/s of kd's and keras.distillation's Distiller (KD, the same
    teacher, students and batches), timed round-robin in this process."""
    path = os.path.join(FLAGS.runs_dir, "throughput.json")
    if os.path.exists(path):
        return _read(path)
    print("throughput: kd vs keras.distillation", flush=True)
    f, windows = _setting(kd_results)
    teacher = keras.saving.load_model(
        os.path.join(kd_dir, "teacher.keras"), compile=False
    )
    t = f["temperature"]
    distillers = {
        "keras_kd Distiller (kd)": kd.Distiller(
            teacher,
            _student(f, 0),
            kd.losses.LogitsDistillation(t),
            student_loss_weight=0.5,
        ),
        "keras.distillation Distiller": _keras_distiller(teacher, _student(f, 0), t),
    }
    train = _split_batches(windows, "train", 0, batch_size=f["batch_size"])
    steps = min(FLAGS.throughput_steps, len(train) - 1)  # Full batches only.
    batches = [train[i] for i in range(steps)]
    for model in distillers.values():
        lm_training.compile_lm(
            model, f["lr"], 1000, kd_results["resolved"]["jit_compile"]
        )
        for x, y, w in batches[:2]:  # Warm-up: traced and compiled.
            model.train_on_batch(x, y, sample_weight=w)
    tokens = steps * f["batch_size"] * f["sequence_length"]
    rates = {name: {"wall": [], "cpu": []} for name in distillers}
    before = [round(v, 2) for v in os.getloadavg()]
    for _ in range(FLAGS.throughput_repeats):
        for name, model in distillers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for x, y, w in batches:
                model.train_on_batch(x, y, sample_weight=w)
            rates[name]["wall"].append(tokens / (time.perf_counter() - wall))
            rates[name]["cpu"].append(tokens / (time.process_time() - cpu))
    result = {
        "rows": {
            name: {clock: summary(v) for clock, v in r.items()}
            for name, r in rates.items()
        },
        "loadavg_before": before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "steps": steps,
        "repeats": FLAGS.throughput_repeats,
        "batch": f["batch_size"],
        "sequence_length": f["sequence_length"],
    }
    _write(path, result)
    return result


def run_seed(seed, rows, runs, shared_teacher=None):
    """Every row of one seed, the kd run first (it trains the teacher, or
    loads `shared_teacher`); yields after each row (the report is
    rewritten then)."""
    kd_dir = os.path.join(FLAGS.runs_dir, f"seed{seed}", "kd")
    kd_args = ROWS["kd"] + ([f"--teacher={shared_teacher}"] if shared_teacher else [])
    kd_results = run_recipe("kd", seed, kd_args)
    if "error" in kd_results:
        runs += [_record(row, seed, kd_results) for row in rows]
        yield
        return
    teacher = shared_teacher or os.path.join(kd_dir, "teacher.keras")
    for row in rows:
        if row == "kd":
            runs.append(_record(row, seed, kd_results))
        elif row in ("teacher", "student_alone"):
            runs.append(_record(row, seed, kd_results, row))
        elif row in ("keras_distillation", "keras_default"):
            try:
                results = run_keras_row(row, seed, teacher, kd_results)
            except Exception as e:  # Recorded; the benchmark goes on.
                results = {"error": f"{type(e).__name__}: {e}"}
            runs.append(_record(row, seed, results))
        else:
            results = run_recipe(row, seed, _row_args(row, seed, teacher))
            runs.append(_record(row, seed, results))
        yield


def main(argv):
    del argv
    rows = [r for r in FLAGS.rows if r]
    unknown = [r for r in rows if r not in ROWS and r not in OPTIONAL_ROWS]
    if unknown:
        raise app.UsageError(f"Unknown rows {unknown}.")
    start, date = time.perf_counter(), datetime.date.today().isoformat()
    name = f"lm_smoke_{date}" if FLAGS.smoke else f"lm_{date}"
    stem = os.path.join(FLAGS.output_dir, name)
    runs = []
    report = {
        "date": date,
        "backend": keras.backend.backend(),
        "command": shlex.join(sys.argv),
        "settings": {
            "seeds": FLAGS.seeds,
            "rows": rows,
            "runs_dir": FLAGS.runs_dir,
            "teacher_per_seed": FLAGS.teacher_per_seed,
        },
        "recipe_flags": recipe_flags(),
        "versions": versions(),
        "loadavg_start": list(os.getloadavg()),
        "notes": NOTES,
        "runs": runs,
    }
    first = os.path.join(FLAGS.runs_dir, f"seed{int(FLAGS.seeds[0])}", "kd")
    for i, seed in enumerate(int(s) for s in FLAGS.seeds):
        shared = None
        if i and not FLAGS.teacher_per_seed:
            shared = os.path.join(first, "teacher.keras")
        for _ in run_seed(seed, rows, runs, shared):
            _write_report(report, rows, stem)
    if os.path.exists(os.path.join(first, "results.json")):
        kd_results = _read(os.path.join(first, "results.json"))
        report["corpus_fingerprint"] = kd_results["corpus"]["fingerprint"]
        try:
            report["throughput"] = measure_throughput(first, kd_results)
        except Exception as e:  # Recorded; the report is still written.
            report["throughput"] = {"error": f"{type(e).__name__}: {e}"}
    report["loadavg_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - start
    for path in _write_report(report, rows, stem):
        print(f"Wrote {path}")


def _write_report(report, rows, stem):
    report["summary"] = summarize(report["runs"], rows)
    return write_outputs(stem, report, format_markdown(report), log=print)


if __name__ == "__main__":
    define_flags()
    app.run(main)
