"""benchmarks/lm.py's summary: held-out perplexity per row (mean ± std over
seeds), paired differences against kd, and the markdown table.

Example:

```python
summary = summarize(runs, rows=["student_alone", "kd", "jsd"])
markdown = format_markdown(report)
```
"""

import numpy as np


def _perplexities(runs, row):
    """`{seed: perplexity}` of `row`'s finished runs."""
    return {
        r["seed"]: r["perplexity"]
        for r in runs
        if r["row"] == row and r.get("perplexity") is not None
    }


def paired_difference(runs, row, reference="kd"):
    """Per seed, `row`'s perplexity minus `reference`'s (seeds where both
    finished): `(mean, sample std or None, seeds lower, seeds paired)`, or
    None without a pair. Lower perplexity is better.

    Example: kd 10.0, 11.0; jsd 9.5, 10.7 → `(-0.4, 0.141, 2, 2)`.
    """
    mine, theirs = _perplexities(runs, row), _perplexities(runs, reference)
    diffs = np.array([mine[s] - theirs[s] for s in sorted(mine) if s in theirs])
    if not len(diffs):
        return None
    std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
    return float(np.mean(diffs)), std, int((diffs < 0).sum()), len(diffs)


def summarize(runs, rows):
    """One summary per row: perplexity mean and sample std over its seeds,
    the paired difference to kd, mean distilled-phase tokens/s."""
    out = []
    for row in rows:
        values = _perplexities(runs, row)
        finished = [r for r in runs if r["row"] == row and "perplexity" in r]
        failed = [r for r in runs if r["row"] == row and "error" in r]
        speeds = [
            r["tokens_per_second"] for r in finished if r.get("tokens_per_second")
        ]
        ppl = np.array(list(values.values()), "float64")
        out.append(
            {
                "row": row,
                "seeds": sorted(values),
                "perplexity_mean": float(ppl.mean()) if len(ppl) else None,
                "perplexity_std": float(ppl.std(ddof=1)) if len(ppl) > 1 else None,
                # The teacher is no student: no paired differences.
                "paired_vs_kd": (
                    None
                    if row in ("kd", "teacher")
                    else paired_difference(runs, row, "kd")
                ),
                "paired_vs_student_alone": (
                    None
                    if row in ("student_alone", "teacher")
                    else paired_difference(runs, row, "student_alone")
                ),
                "tokens_per_second": float(np.mean(speeds)) if speeds else None,
                "failed": [r["error"][-300:] for r in failed],
            }
        )
    return out


def _last_line(text):
    return (text.strip().splitlines() or ["?"])[-1]


def _ppl_cell(entry):
    if entry["perplexity_mean"] is None:
        return "–"
    std = entry["perplexity_std"]
    spread = "" if std is None else f" ± {std:.3f}"
    return f"{entry['perplexity_mean']:.3f}{spread}"


def _paired_cell(entry, reference):
    paired = entry[f"paired_vs_{reference}"]
    if paired is None:
        return "–"
    mean, std, lower, n = paired
    spread = "" if std is None else f" ± {std:.3f}"
    return f"{mean:+.3f}{spread} ({lower}/{n} lower)"


def format_markdown(report):
    """The report as markdown: settings, the perplexity table, the
    throughput comparison, failures."""
    settings = report["settings"]
    lines = [
        f"# distill_lm benchmark ({report['date']})",
        "",
        f"Backend {report['backend']}, seeds {settings['seeds']}, corpus "
        f"fingerprint `{report.get('corpus_fingerprint', '?')[:16]}`.",
        f"Recipe flags of every row: `{' '.join(report['recipe_flags'])}`.",
        "",
        "Held-out test perplexity (bytes; lower is better), mean ± sample std "
        "over seeds; paired: per seed, the row minus the student alone or "
        "kd (mean ± std, seeds where the row is lower). "
        + _teacher_sentence(settings)
        + " Train tokens/s: each row's own run (the phase it reports), first "
        "step (compilation) left out; runs differ in machine load.",
        "",
        "| row | perplexity | paired vs student alone | paired vs kd "
        "| train tokens/s | notes |",
        "|---|---|---|---|---|---|",
    ]
    for entry in report["summary"]:
        speed = entry["tokens_per_second"]
        notes = "; ".join(f"failed: {_last_line(e)}" for e in entry["failed"])
        notes = notes or report["notes"].get(entry["row"], "")
        speed = f"{speed:,.0f}" if speed else "–"
        lines.append(
            f"| {entry['row']} | {_ppl_cell(entry)} | "
            f"{_paired_cell(entry, 'student_alone')} | "
            f"{_paired_cell(entry, 'kd')} | {speed} | {notes} |"
        )
    lines += ["", *_throughput_lines(report.get("throughput"))]
    return "\n".join(lines)


def _teacher_sentence(settings):
    if settings.get("teacher_per_seed", True):
        return "Each seed's rows share that seed's teacher."
    return (
        "Every seed's rows distil from one teacher, trained by the first "
        "seed's kd run; seeds vary the students' initial weights and batch "
        "order."
    )


def _throughput_lines(throughput):
    if not throughput:
        return ["Throughput: not measured."]
    if "error" in throughput:
        return [f"Throughput: failed ({_last_line(throughput['error'])})."]
    lines = [
        f"Throughput, one process, round-robin ({throughput['repeats']} × "
        f"{throughput['steps']} `train_on_batch` steps of {throughput['batch']} "
        f"× {throughput['sequence_length']} tokens, median; load average "
        f"before {throughput['loadavg_before']}, after "
        f"{throughput['loadavg_after']}):",
        "",
        "| distiller | tokens/s (wall) | tokens/s (CPU) |",
        "|---|---|---|",
    ]
    for name, row in throughput["rows"].items():
        lines.append(
            f"| {name} | {row['wall']['median']:,.0f} | {row['cpu']['median']:,.0f} |"
        )
    return lines
