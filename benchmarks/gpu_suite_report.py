"""The GPU suite's report: its files, rewritten as results come in.

`Results` holds the suite's result dict and writes `<stem>.json` and
`<stem>.md` after every row and run (each file written whole, then renamed:
a call cut at any point leaves what it had measured), and the PNG at the
end; `row_line` and `run_line` are the lines printed per row and run.

Example:

```python
results = Results(result, "results/gpu_suite_x", refresh=lambda r: None)
results.result["throughput"].append(row)
print(results.row_line(row))
results.save()  # JSON and markdown; save(final=True) adds the PNG.
```
"""

import report_files


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def row_line(row):
    """One throughput row as a printed line."""
    head = f"[{row['policy']}] {row['config']}"
    if "failed" in row:
        return f"{head}: FAILED: {row['failed']}"
    if "images_per_s" not in row:
        return f"{head}: skipped: {row.get('skipped', '?')}"
    ips = row["images_per_s"]
    line = f"{head}: {ips['median']:.0f} images/s (spread {ips['spread_pct']:.0f} %"
    if "steps_per_call" in row:
        fraction = row["overhead"]["fraction"]
        line += (
            f", {row['steps_per_call']} steps/call, per-call overhead "
            f"{_fmt(None if fraction is None else 100 * fraction, '.1f')} %"
        )
    line += ")"
    if "warmup_s" in row:
        line += f", warm-up {row['warmup_s']:.1f} s, row {row['row_s']:.1f} s"
    if row.get("peak_device_mb") is not None:
        line += f", peak {row['peak_device_mb']:.0f} MB"
    return line


def run_line(run):
    """One accuracy run as a printed line."""
    head = f"[accuracy] {run['run']}"
    if "failed" in run:
        return f"{head}: FAILED: {run['failed']}"
    if "test_accuracy" not in run:
        return f"{head}: skipped: {run.get('skipped', '?')}"
    source = f"loaded from {run['loaded']}" if run.get("loaded") else None
    source = source or f"{run['epochs']} epochs in {run['wall_s']:.1f} s"
    return f"{head}: {100 * run['test_accuracy']:.2f} % ({source})"


def _throughput_table(result):
    s = result["settings"]
    lines = [
        "",
        f"Throughput: batch {s['batch_size']}, {s['repeats']} timed calls per "
        f"row at the steps per call that keep the per-call overhead under "
        f"{100 * s['max_overhead']:.0f} % (probed at {s['steps']} and "
        f"{2 * s['steps']} steps, at most {s['max_steps']}), then one call "
        "at twice that: the overhead column.",
        "",
        "| policy | row | images/s (median) | spread % | steps/call | "
        "overhead % | peak device MB | warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["throughput"]:
        head = f"| {row['policy']} | {row['description']} |"
        if "images_per_s" not in row:
            what = f"failed: {row['failed']}" if "failed" in row else None
            what = what or f"skipped: {row.get('skipped')}"
            lines.append(f"{head} {what[:200]} | | | | | |")
            continue
        ips = row["images_per_s"]
        fraction = row.get("overhead", {}).get("fraction")
        lines.append(
            f"{head} {ips['median']:.0f} | {ips['spread_pct']:.0f} | "
            f"{row.get('steps_per_call', '')} | "
            f"{_fmt(None if fraction is None else 100 * fraction, '.1f')} | "
            f"{_fmt(row.get('peak_device_mb'), '.0f')} | "
            f"{_fmt(row.get('warmup_s'), '.1f')} |"
        )
    return lines + ["", f"Memory: {result['memory_note']}"]


def _accuracy_table(result):
    acc = result["accuracy"]
    lines = [
        "",
        f"Accuracy: {acc['data']} ({acc['train_images']} train,"
        f" {acc['test_images']} test; JPEGs decoded with "
        f"{acc['jpeg_decoder']}), {acc['policy']}.",
        "",
        "| run | epochs | test accuracy % | wall s | images/s |",
        "|---|---|---|---|---|",
    ]
    for run in acc["runs"]:
        if "test_accuracy" not in run:
            what = f"failed: {run['failed']}" if "failed" in run else None
            what = what or f"skipped: {run.get('skipped')}"
            lines.append(f"| {run['run']} | {what[:200]} | | | |")
            continue
        lines.append(
            f"| {run['run']} | {run['epochs']} | "
            f"{100 * run['test_accuracy']:.2f} | "
            f"{run['wall_s']:.1f} | {_fmt(run.get('images_per_s'), '.0f')} |"
        )
    return lines


def format_markdown(result):
    s, m = result["settings"], result["machine"]
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in result["parts_s"].items())
    budget = result["budget"]
    lines = [
        f"GPU suite ({result['part']}), {result['backend']} on {m['device']} "
        f"({m['device_name']}), {s['teacher']} -> {s['student']}, "
        f"{result['date']}, wall {result['wall_s']:.0f} s ({parts}).",
        "",
        "Budget: "
        + (
            "none"
            if budget["budget_s"] is None
            else f"{budget['budget_s']:.0f} s, {budget['elapsed_s']:.0f} s used"
        )
        + "; skipped for it: "
        + (", ".join(k["what"] for k in budget["skipped"]) or "nothing")
        + ".",
    ]
    if "failed" in result.get("preflight", {}):
        lines += ["", f"Preflight FAILED: {result['preflight']['failed']}"]
    if result.get("errors"):
        lines += [""] + [f"Part FAILED: {e}" for e in result["errors"]]
    if result.get("throughput"):
        lines += _throughput_table(result)
    if result.get("accuracy"):
        lines += _accuracy_table(result)
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['name']} | {_fmt(t['ratio'], '.3f')} | "
            f"{'≤' if t.get('at_most') else '≥'} {t['goal']} | "
            f"{t['met']} |"
        )
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def plot(result, plt):
    rows = [r for r in result.get("throughput", []) if "images_per_s" in r]
    runs = result.get("accuracy", {}).get("runs", [])
    runs = [r for r in runs if "test_accuracy" in r]
    figure, axes = plt.subplots(1, 2, figsize=(14, 0.3 * len(rows) + 2))
    labels = [f"{r['description']} [{r['policy']}]" for r in rows]
    medians = [r["images_per_s"]["median"] for r in rows]
    errors = [
        [m - r["images_per_s"]["min"] for m, r in zip(medians, rows)],
        [r["images_per_s"]["max"] - m for m, r in zip(medians, rows)],
    ]
    axes[0].barh(labels, medians, xerr=errors)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("images/s (median, min-max)")
    axes[1].bar([r["run"] for r in runs], [100 * r["test_accuracy"] for r in runs])
    axes[1].set_ylabel("test accuracy %")
    figure.suptitle(f"keras_kd GPU suite, {result['machine']['device_name']}")
    return figure


class Results:
    """The result dict and its files at `stem`; `refresh(result)` brings
    the derived fields (targets, budget, wall time) up to date first."""

    row_line = staticmethod(row_line)
    run_line = staticmethod(run_line)

    def __init__(self, result, stem, refresh, log=print):
        self.result, self.stem, self.refresh, self.log = result, stem, refresh, log
        self.files = []

    def save(self, final=False):
        """Writes the JSON and markdown (and, when `final`, the PNG)."""
        self.refresh(self.result)
        self.files = report_files.write_outputs(
            self.stem,
            self.result,
            format_markdown(self.result),
            plot if final else None,
            log=self.log,
        )
        self.result["files"] = self.files
        return self.files
