"""A suite's finished runs, kept in the repository.

`accuracy.py --store_dir=DIR` writes, after every finished (method, seed),
`DIR/<dataset key>/<name>_s<seed>.json` (`{"runs": [...]}`: the rows of
that recipe run, with their command) and, for a kd run, the teacher it
trained as `DIR/<dataset key>/teacher_s<seed>.keras`. A later suite reads
them instead of running again and distils from the stored teachers, so a
suite in parts survives the loss of its `--work_dir` once the store is
committed.

Example:

```
save_runs("benchmarks/results/runs", "fashion", "kd", 0, rows, "t.keras")
load_runs("benchmarks/results/runs", "fashion", "kd", 0)  # → rows
stored_teacher("benchmarks/results/runs", "fashion", 0)  # → its path
```
"""

import json
import os
import shutil


def _record(store, key, name, seed):
    return os.path.join(store, key, f"{name}_s{seed}.json")


def stored_teacher(store, key, seed):
    """The stored teacher file of `seed`'s kd run, or None."""
    if not store:
        return None
    path = os.path.join(store, key, f"teacher_s{seed}.keras")
    return path if os.path.exists(path) else None


def load_runs(store, key, name, seed):
    """The stored rows of run `<name>_s<seed>`, or None."""
    path = _record(store, key, name, seed) if store else None
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["runs"]


def save_runs(store, key, name, seed, runs, teacher=None):
    """Stores the rows of run `<name>_s<seed>` and, for a kd run, a copy of
    the `teacher` file it trained (written first: a record is only there
    once everything it needs is)."""
    os.makedirs(os.path.join(store, key), exist_ok=True)
    if teacher is not None:
        target = os.path.join(store, key, f"teacher_s{seed}.keras")
        shutil.copyfile(teacher, target + ".tmp")
        os.replace(target + ".tmp", target)
    path = _record(store, key, name, seed)
    with open(path + ".tmp", "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    os.replace(path + ".tmp", path)
