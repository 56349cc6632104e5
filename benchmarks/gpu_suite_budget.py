"""The GPU suite's time budget and its per-call overhead check.

`Budget` counts the seconds of `--budget_s` on the suite's clock
(`throughput_rows.now`, which tests replace with a fake one) and refuses to
start what it estimates cannot finish in the seconds left, recording each
refusal. `Estimates` turns what the suite has measured so far into those
estimates, conservatively: before anything of a kind has been measured it
assumes `first_s` (`--first_row_s`) or 1.5x the longest measurement yet.

`call_overhead` and `steps_for` size the timed calls: two calls of `n` and
`2n` steps give the per-call overhead `c = 2 t(n) - t(2n)` and the step
time `s = (t(2n) - t(n)) / n`; `steps_for` picks the steps per call that
keep `c / (c + n s)` under the limit (with a 25 % margin).

Example:

```python
budget = Budget(270, first_s=60)
reason = budget.check(estimate_s=40.0)  # None, or why not (recorded).
c, s = call_overhead(20, t_20, t_40)
n = steps_for(c, s, limit=0.02, low=20, high=400)
```
"""

import math

import throughput_rows as tp


class Budget:
    """`seconds` of the suite's clock from now; None or 0: no limit."""

    def __init__(self, seconds=None, first_s=60.0):
        self.seconds = seconds or None
        self.first_s = float(first_s)
        self.start = tp.now()
        self.skipped = []

    def elapsed(self):
        return tp.now() - self.start

    def left(self):
        if self.seconds is None:
            return math.inf
        return self.seconds - self.elapsed()

    def check(self, estimate_s, what=None):
        """None when `estimate_s` (None: `first_s`, nothing measured yet)
        fits in the seconds left; otherwise the reason, also recorded in
        `skipped` under `what` when given."""
        if self.seconds is None:
            return None
        estimate = self.first_s if estimate_s is None else float(estimate_s)
        left = self.left()
        if estimate <= left:
            return None
        reason = (
            f"budget: needs ~{estimate:.0f} s, {max(left, 0.0):.0f} s of "
            f"{self.seconds:.0f} s left"
        )
        if what is not None:
            self.skipped.append({"what": what, "reason": reason})
        return reason

    def record(self, what, reason):
        """Records a skip decided elsewhere (a stopped run, a timed phase)."""
        self.skipped.append({"what": what, "reason": reason})

    def summary(self):
        return {
            "budget_s": self.seconds,
            "first_row_s": self.first_s,
            "elapsed_s": self.elapsed(),
            "skipped": list(self.skipped),
        }


class Estimates:
    """Seconds measured per (kind, key); estimates for what comes next.

    `add(kind, key, seconds)` records one measurement (a row of the same
    configuration in another policy, say, shares `key`);
    `estimate(kind, key)` is 1.2x the same key's longest measurement, else
    1.5x the kind's longest, else 1.5x the longest of any kind, but at
    least `first_s`, else None (the caller's first-row prior)."""

    def __init__(self, first_s):
        self.first_s = float(first_s)
        self.seconds = {}

    def add(self, kind, key, seconds):
        self.seconds.setdefault((kind, key), []).append(float(seconds))

    def estimate(self, kind, key):
        same = self.seconds.get((kind, key))
        if same:
            return 1.2 * max(same)
        of_kind = [max(v) for (k, _), v in self.seconds.items() if k == kind]
        if of_kind:
            return 1.5 * max(of_kind)
        every = [max(v) for v in self.seconds.values()]
        if every:
            return max(self.first_s, 1.5 * max(every))
        return None


def call_overhead(n, t_n, t_2n):
    """`(per-call overhead s, per-step s)` from calls of `n` and `2n`
    steps (the overhead can come out negative on a noisy machine)."""
    step = (t_2n - t_n) / n
    return 2.0 * t_n - t_2n, step


def overhead_fraction(overhead_s, step_s, n):
    """The share of a call of `n` steps that is per-call overhead."""
    total = overhead_s + n * step_s
    return overhead_s / total if total > 0 else math.nan


def steps_for(overhead_s, step_s, limit, low, high):
    """Steps per call keeping the overhead fraction under `limit` with a
    25 % margin, within `[low, high]`."""
    if step_s <= 0:
        return high
    wanted = math.ceil(1.25 * max(overhead_s, 0.0) / (limit * step_s))
    return int(min(max(wanted, low), high))
