"""`distill_lm`'s models, resumable training loop and perplexity.

Each phase trains with one `train_on_batch` per batch, reading the batch
just before its step, so on-policy batches (`kd.on_policy`) are sampled
from the student's current weights and a run repeats exactly. After every
epoch the model and its optimizer are checkpointed; a killed phase resumes
at its last finished epoch, and a finished one is loaded, not retrained.

Example:

```python
model = gpt2(2, 64, 128, "student", seed=1)
compile_lm(model, lr=3e-3, total_steps=300)
result = fit_phase("student_alone", model,
                   lambda first_epoch: TokenBatches(w, m, 32, 0, first_epoch),
                   epochs=3, out_dir="runs/lm")
ppl = perplexity(model, TokenBatches(w_test, m_test, 64, shuffle=False))
```
"""

import csv
import json
import math
import os
import time

import keras
import numpy as np
from keras import ops

from keras_kd.cli.lm_corpus import VOCABULARY_SIZE


def gpt2(num_layers, hidden_dim, sequence_length, name, seed, dropout=0.0):
    """A keras_hub GPT-2 causal LM (no preprocessor, byte vocabulary)
    built from config with initial weights drawn from `seed`."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=num_layers,
        num_heads=max(1, hidden_dim // 32),
        hidden_dim=hidden_dim,
        intermediate_dim=4 * hidden_dim,
        dropout=dropout,
        max_sequence_length=sequence_length,
        name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None, name=name)


def make_optimizer(lr, total_steps):
    """Adam with a linear warm-up over the first 5 % of steps, a cosine
    decay to 0 after it and gradients clipped to a global norm of 1."""
    warmup = max(1, total_steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(1, total_steps - warmup),
        warmup_target=lr,
        warmup_steps=warmup,
    )
    return keras.optimizers.Adam(schedule, global_clipnorm=1.0)


def compile_lm(model, lr, total_steps, jit_compile=False):
    """Compiles an LM or a `kd.Distiller` for `fit_phase`."""
    model.compile(
        optimizer=make_optimizer(lr, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )


def token_nll(logits, labels):
    """`−log softmax(logits)[label]` per position, float32 NumPy."""
    log_p = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    picked = ops.take_along_axis(
        log_p, ops.expand_dims(ops.cast(labels, "int32"), -1), axis=-1
    )
    return -ops.convert_to_numpy(ops.squeeze(picked, -1))


def perplexity(model, batches):
    """`exp` of the mean next-token NLL over the real tokens (sample
    weight > 0) of `batches`; returns `(perplexity, mean NLL, tokens)`.

    Example:

    ```python
    ppl, nll, tokens = perplexity(student, test_batches)
    ```
    """
    total, count, size = 0.0, 0.0, None
    for i in range(len(batches)):
        x, y, weight = batches[i]
        size = size or len(y)
        real = np.asarray(weight) > 0
        logits = model.predict_on_batch(_padded(x, size))[: len(y)]
        nll = token_nll(logits, y)
        total += float(np.sum(nll[real], dtype="float64"))
        count += float(real.sum())
    mean = total / max(count, 1.0)
    return math.exp(mean), mean, int(count)


def _padded(x, size):
    """`x`'s arrays padded with zero rows to `size` (one traced shape)."""
    return keras.tree.map_structure(
        lambda a: np.concatenate(
            [a, np.zeros((size - len(a),) + a.shape[1:], a.dtype)]
        ),
        x,
    )


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def _load(model, path):
    """Loads weights and optimizer state (the optimizer built first)."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)


def _checkpoint(model, backup_dir, epoch, history):
    """Saves epoch `epoch`'s state; `state.json` names it only once it is
    complete, so a kill at any point leaves a loadable checkpoint."""
    os.makedirs(backup_dir, exist_ok=True)
    name = f"epoch_{epoch}.weights.h5"
    model.save_weights(os.path.join(backup_dir, name))
    state_path = os.path.join(backup_dir, "state.json")
    old = _read_json(state_path)["file"] if os.path.exists(state_path) else None
    _write_json(state_path, {"epoch": epoch, "file": name, "history": history})
    if old and old != name:
        os.remove(os.path.join(backup_dir, old))


def _restore(model, backup_dir):
    """`(first epoch, history)` of a checkpointed phase (`(0, [])` if none)."""
    state_path = os.path.join(backup_dir, "state.json")
    if not os.path.exists(state_path):
        return 0, []
    state = _read_json(state_path)
    _load(model, os.path.join(backup_dir, state["file"]))
    return state["epoch"], state["history"]


def fit_phase(name, model, make_batches, epochs, out_dir, validation=None, log=print):
    """Trains a compiled `model` for `epochs`, resumably, in `out_dir/name`.

    `make_batches(first_epoch)` returns the training PyDataset positioned at
    `first_epoch` (its `on_epoch_end` advances it); `validation(model)`
    returns a number logged per epoch (the validation perplexity); `log`
    gets progress lines (None: silence). Returns
    the phase's result dict; a finished phase is loaded and its stored
    result returned.
    """
    log = log or (lambda message: None)
    phase_dir = os.path.join(out_dir, name)
    result_path = os.path.join(phase_dir, "result.json")
    weights_path = os.path.join(phase_dir, "weights.weights.h5")
    os.makedirs(phase_dir, exist_ok=True)
    if os.path.exists(result_path):
        _load(model, weights_path)
        log(f"[{name}] already trained; loaded from {phase_dir}.")
        return _read_json(result_path)
    backup_dir = os.path.join(phase_dir, "backup")
    first_epoch, history = _restore(model, backup_dir)
    if first_epoch:
        log(f"[{name}] resuming at epoch {first_epoch + 1}/{epochs}.")
    batches = make_batches(first_epoch)
    start = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        row = _train_epoch(model, batches)
        row["traced"] = epoch == first_epoch  # Its first step compiled.
        batches.on_epoch_end()
        row["epoch"] = epoch + 1
        if validation is not None:
            row["validation_perplexity"] = validation(model)
        history.append(row)
        log(f"[{name}] epoch {epoch + 1}/{epochs}: " + _describe(row))
        _checkpoint(model, backup_dir, epoch + 1, history)
    model.save_weights(weights_path)
    result = _result(history, first_epoch, time.perf_counter() - start)
    _write_csv(os.path.join(phase_dir, "log.csv"), history)
    _write_json(result_path, result)
    return result


def _train_epoch(model, batches):
    """One pass: mean logs, seconds and tokens (positions) trained on, and
    those of its first step."""
    sums, seconds, tokens, first = {}, 0.0, 0, None
    for i in range(len(batches)):
        start = time.perf_counter()  # Reading (maybe sampling) counts.
        x, y, weight = batches[i]
        logs = model.train_on_batch(x, y, sample_weight=weight, return_dict=True)
        seconds += time.perf_counter() - start
        tokens += int(np.size(y))
        first = first or (seconds, tokens)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    row = {key: value / len(batches) for key, value in sums.items()}
    row.update(train_seconds=seconds, train_tokens=tokens)
    row.update(first_step_seconds=first[0], first_step_tokens=first[1])
    return row


def _describe(row):
    hidden = ("epoch", "train_tokens", "traced", "first_step_seconds")
    keys = [k for k in row if k not in hidden and k != "first_step_tokens"]
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys)


def _write_csv(path, history):
    keys = sorted({k for row in history for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _result(history, first_epoch, wall):
    """The phase's summary. `tokens_per_second` leaves out the first step
    of each run (or resumed run), which traces and compiles the step."""
    seconds = sum(row["train_seconds"] for row in history)
    tokens = sum(row["train_tokens"] for row in history)
    traced = [row for row in history if row.get("traced")]
    steady_seconds = seconds - sum(row["first_step_seconds"] for row in traced)
    steady_tokens = tokens - sum(row["first_step_tokens"] for row in traced)
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    return {
        "epochs": len(history),
        "train_seconds": seconds,
        "train_tokens": tokens,
        "tokens_per_second": (
            steady_tokens / steady_seconds if steady_tokens > 0 else None
        ),
        "wall_seconds": wall,
        "resumed_at_epoch": first_epoch,
        "final_losses": final,
        "validation_perplexity": [row.get("validation_perplexity") for row in history],
    }
