"""The tables, plots and merges of `benchmarks/accuracy.py`'s reports.

A report is the suite's JSON (see accuracy.py); `write_report` writes its
markdown table (mean ± std over seeds, the difference to KD unpaired, and
to KD and the student alone paired by seed: `paired_differences`) and its
plot (one colour per method, the teacher as a reference line).

Example:

```python
report["datasets"][0]["summary"] = summarize(report["datasets"][0]["runs"])
write_report(report, "benchmarks/results/accuracy_cpu_digits")
```
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_plot import plot  # noqa: E402

# Above this 1-minute load average (2 cores) a run's times are void.
LOAD_LIMIT = 1.5
# The class-subset rows (SKD's own protocol) begin with this.
SUBSET = "subset: "


def quiet(run):
    """Whether a run's times were measured on a quiet machine: its load
    average at the start and end of training recorded and at most
    `LOAD_LIMIT` (runs without a record are not quoted)."""
    loads = run.get("load_average") or [None]
    return None not in loads and max(loads) <= LOAD_LIMIT


def summarize(runs):
    """Per method: mean ± sample std (ddof=1, 0 for one seed) over seeds of
    every number (`std_ddof`; reports before 2026-12-04 have the
    population std and no `std_ddof`); the
    times only over the runs measured on a quiet machine (`quiet`; the
    others are counted as `loaded`)."""
    table = {}
    for run in runs:
        table.setdefault(run["method"], []).append(run)
    rows = []
    for method, items in table.items():
        done = [r for r in items if "failed" not in r]
        row = {"method": method, "seeds": len(done), "failed": len(items) - len(done)}
        row["loaded"] = len([r for r in done if not quiet(r)])
        for key in ("last", "best", "train_seconds", "images_per_second"):
            timed = key in ("train_seconds", "images_per_second")
            values = [
                r[key]
                for r in done
                if r.get(key) is not None and (quiet(r) or not timed)
            ]
            if values:
                row[key] = float(np.mean(values))
                row[key + "_std"] = float(np.std(values, ddof=min(1, len(values) - 1)))
        row["std_ddof"] = 1
        rows.append(row)
    return rows


def _std_kind(report):
    rows = [row for d in report["datasets"] for row in d["summary"]]
    return "sample" if all(r.get("std_ddof") == 1 for r in rows) else "population"


def format_markdown(report):
    lines = [
        f"# Accuracy, suite `{report['suite']}`",
        "",
        f"- date: {report['date']}",
        f"- machine: {report['machine']['host']}, "
        f"{report['machine']['platform']}, {report['machine']['cpu_count']} "
        f"CPUs ({report['machine']['device']})",
        f"- backend: {report['backend']}",
        f"- command: `{report['command']}`",
        _code_line(report.get("code")),
        f"- seeds: {', '.join(map(str, report['seeds']))}; mean ± std "
        f"({_std_kind(report)}) over seeds; accuracy on the test split.",
        "",
    ]
    if report.get("interrupted"):
        lines += [
            "**Interrupted suite**: only the runs counted in `runs` finished.",
            "",
        ]
    for dataset in report["datasets"]:
        lines += [
            f"## {dataset['key']}: {dataset['teacher']} → {dataset['student']}",
            "",
            f"{dataset['note']}; {dataset['epochs']} student epochs, "
            f"teachers {dataset['teacher_epochs']}.",
            "",
        ]
        if dataset.get("validation"):
            v = dataset["validation"]
            lines += [
                f"Validation split (every choice; never test): "
                f"{v['images']} images, class-stratified, seed "
                f"{v['seed']}, from {v['from']}.",
                "",
            ]
        for method, t in dataset.get("tuning", {}).items():
            lines.append(_tuning_line(method, t))
        if dataset.get("tuning"):
            lines.append("")
        if dataset.get("weights"):
            chosen = ", ".join(
                f"{m} {w['label']} (`{' '.join(w['flags'])}`)"
                for m, w in dataset["weights"].items()
            )
            lines += [f"Term weights chosen earlier (`--weights`): {chosen}.", ""]
        lines += [_training_time(dataset), ""]
        protocol = dataset.get("protocol_epochs")
        if protocol and [dataset["epochs"], dataset["teacher_epochs"]] != (
            list(protocol)
        ):
            lines += [
                f"**Shortened run**: {dataset['epochs']} student / "
                f"{dataset['teacher_epochs']} teacher epochs instead of the "
                f"protocol's {protocol[0]} / {protocol[1]}; the numbers are "
                f"not the protocol's.",
                "",
            ]
        references = _references(dataset["runs"])
        lines += [
            "| method | last-epoch acc % | best-epoch acc % | Δ last vs kd "
            "(points, unpaired) | "
            + "".join(
                f"Δ last vs {REFERENCE_NAMES[r]}, paired by seed (points, "
                "mean ± sample std) | "
                for r in references
            )
            + "runs | train s / run | images/s (recipes' timer) |",
            "|---|---|---|---|" + "---|" * len(references) + "---|---|---|",
        ]
        kd_row = next(
            (r for r in dataset["summary"] if r["method"] == "kd" and "last" in r), None
        )
        for row in dataset["summary"]:

            def pm(key, scale=1.0, fmt=".2f"):
                if key not in row:
                    return "–"
                if key in ("last", "best") and row["seeds"] == 1:
                    return f"{scale * row[key]:{fmt}} (one seed)"
                return f"{scale * row[key]:{fmt}} ± {scale * row[key + '_std']:{fmt}}"

            runs = f"{row['seeds']}" + (
                f" ({row['failed']} failed)" if row["failed"] else ""
            )
            lines.append(
                f"| {row['method']} | {pm('last', 100)} | {pm('best', 100)} "
                f"| {_versus(row, kd_row)} "
                + "".join(
                    f"| {_paired_cell(dataset['runs'], row['method'], r)} "
                    for r in references
                )
                + f"| {runs} | {pm('train_seconds', 1, '.0f')} | "
                f"{pm('images_per_second', 1, '.0f')}{_loaded(row)} |"
            )
        if any(r["method"].startswith(SUBSET) for r in dataset["summary"]):
            lines += [
                "",
                "Class-subset rows: accuracy on the subset's classes; each is "
                "paired by seed with its subset's scratch row, in the student "
                "alone's column.",
            ]
        lines.append("")
    return "\n".join(lines)


def _code_line(code):
    """The code's commit (and files changed from it) of a report."""
    if not code:
        return "- code: not recorded"
    changed = f", with changes to {', '.join(code['modified'])}" * bool(
        code["modified"]
    )
    return f"- code: commit {code['commit'][:12]}{changed}"


def _loaded(row):
    """A note on the runs whose times are not quoted (`quiet`)."""
    loaded = row.get("loaded", 0)
    return (
        f" ({loaded} not quoted: load > {LOAD_LIMIT} or unrecorded)" if loaded else ""
    )


def _versus(row, kd_row):
    """The difference of mean last-epoch accuracy to KD's, and whether it
    exceeds the two rows' standard deviations added (a plain, conservative
    reading of 3 seeds; one seed has no spread, so no verdict). The
    teacher and the class-subset rows (another
    task: accuracy on the subset's classes) are not compared."""
    if (
        kd_row is None
        or "last" not in row
        or row is kd_row
        or (row["method"] == "teacher" or row["method"].startswith(SUBSET))
    ):
        return "–"
    diff = 100 * (row["last"] - kd_row["last"])
    if row["seeds"] == 1:
        return f"{diff:+.2f} (one seed)"
    noise = 100 * (row["last_std"] + kd_row["last_std"])
    verdict = (
        "above" if diff > noise else "below" if -diff > noise else ("within noise")
    )
    return f"{diff:+.2f} ({verdict})"


# The rows every method is paired against, by seed; `kd_ce1` (KD at the
# FA/AFD/RTK presets' 1·CE + 0.9·KD) when the suite ran it, so that a
# feature term is measured against its own loss mix without the term, and
# `kd_tuned` (KD at the (T, α) its grid chose) when run.
REFERENCE_NAMES = {
    "kd": "kd",
    "student": "student alone",
    "kd_ce1": "kd_ce1",
    "kd_tuned": "kd_tuned",
}


def _references(runs):
    """The rows to pair against: kd, the student alone, and kd_ce1 and
    kd_tuned when run."""
    ran = {r["method"] for r in runs if "last" in r}
    return ["kd", "student"] + [m for m in ("kd_ce1", "kd_tuned") if m in ran]


def paired_differences(runs, method, reference):
    """Per seed, `method`'s last-epoch accuracy minus `reference`'s (same
    seed, both finished): `(mean, sample std (ddof=1; None for one seed),
    seeds above, seeds below, seeds paired)`, or None with no pair.

    Example: kd 0.80, 0.82; fitnets 0.81, 0.85 → `(0.02, 0.01414, 2, 0, 2)`.
    """

    def last(name):
        # A later run of the same seed (a merged, resumed suite) wins.
        return {
            r["seed"]: r["last"] for r in runs if r["method"] == name and "last" in r
        }

    mine, theirs = last(method), last(reference)
    diffs = np.array([mine[s] - theirs[s] for s in sorted(mine) if s in theirs])
    if not len(diffs):
        return None
    std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None
    above, below = int((diffs > 0).sum()), int((diffs < 0).sum())
    return float(np.mean(diffs)), std, above, below, len(diffs)


def _subset_scratch(method):
    """A class-subset row's own student alone, trained from scratch on the
    same images: `"subset: skd (10/class)"` → `"subset: scratch (10/class)"`."""
    name = method[len(SUBSET) :]
    return SUBSET + "scratch" + name[name.find(" (") :] * (" (" in name)


def _paired_cell(runs, method, reference):
    """`paired_differences` in points, e.g. "+0.42 ± 0.10 (3/3 above)": the
    seeds agreeing in sign with the mean. Not for the reference itself or the
    teacher. A class-subset row (another task) is paired only in the student
    alone's column, against its subset's scratch row."""
    if method.startswith(SUBSET):
        if reference != "student":
            return "–"
        reference = _subset_scratch(method)
    if method in (reference, "teacher"):
        return "–"
    paired = paired_differences(runs, method, reference)
    if paired is None:
        return "–"
    mean, std, above, below, n = paired
    spread = "" if std is None else f" ± {100 * std:.2f}"
    agree = f"{below}/{n} below" if mean < 0 else f"{above}/{n} above"
    return f"{100 * mean:+.2f}{spread} ({agree})"


def panels(report):
    """The plot's panels (`accuracy_plot.plot`): per dataset, its 10-class
    rows under the teacher's line and, apart, its class-subset rows, which
    are scored on fewer classes and have no teacher line of their own."""
    result = []
    for dataset in report["datasets"]:
        title = f"{dataset['key']}: {dataset['teacher']} → {dataset['student']}"
        rows = [r for r in dataset["summary"] if "last" in r]
        teacher = [r for r in rows if r["method"] == "teacher"]
        subset = [r for r in rows if r["method"].startswith(SUBSET)]
        main = [r for r in rows if r not in teacher + subset]
        result.append(_panel(title, main, teacher, dataset["runs"]))
        if subset:
            result.append(
                _panel(title + ", class subsets", subset, [], dataset["runs"])
            )
    return result


def _panel(title, rows, teacher, runs):
    return {"title": title, "rows": rows, "teacher": teacher, "runs": runs}


def write_report(report, stem):
    markdown = format_markdown(report)
    if report.get("parts"):  # A merged suite: its parts' own wall times.
        markdown += (
            "\nWall time per part (min): "
            + ", ".join(
                f"{p['file']} {p['wall_seconds'] / 60:.1f}" for p in report["parts"]
            )
            + ".\n"
        )
    else:
        markdown += f"\nTotal wall time: {report['wall_seconds'] / 60:.1f} min.\n"
    for note in report.get("notes", []):
        markdown += f"\nNote: {note}\n"
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    plotted = plot(panels(report), stem + ".png")
    print(markdown)
    print(f"Wrote {stem}.md, .json{', .png' if plotted else ''}")


def training_seconds(dataset):
    """`(seconds, phases, loaded)`: the training time of every phase of a
    dataset's runs (teachers, students alone, distilled students) and of
    the sweep's other grid points (the chosen one's runs are the suite's),
    how many phases, and how many of them ran on a loaded machine."""
    timed = [r for r in dataset["runs"] if r.get("train_seconds")]
    total = sum(r["train_seconds"] for r in timed)
    for tuning in dataset.get("tuning", {}).values():
        total += sum(
            s
            for factor, s in tuning.get("train_seconds", {}).items()
            if factor != tuning["chosen"]
        )
    return total, len(timed), len([r for r in timed if not quiet(r)])


def _training_time(dataset):
    total, phases, loaded = training_seconds(dataset)
    return (
        f"Training time: {total / 3600:.2f} h over {phases} phases and the "
        f"sweep's other grid points (the sum of their training seconds; "
        f"{loaded} phases on a loaded machine or unrecorded, whose times "
        f"are inflated)."
    )


def _tuning_line(method, tuning):
    """A method's sweep: the chosen point's label and flags, the
    validation accuracy of each grid point and why a point that failed did
    (earlier reports: the weight of one flag)."""
    grid = ", ".join(
        [f"{w}: {100 * a:.2f}%" for w, a in tuning["validation_accuracy"].items()]
        + [f"{w}: failed ({why})" for w, why in tuning.get("failed", {}).items()]
        + [f"{w}: not run yet" for w in tuning.get("not_run", [])]
    )
    if "flag" in tuning:
        chosen = f"`--{tuning['flag']}={tuning['chosen']}`"
    else:
        chosen = f"{tuning['chosen']} (`{' '.join(tuning['chosen_flags'])}`)"
    return (
        f"- {method}: {chosen} chosen by {tuning['criterion']} "
        f"(seeds {tuning['seeds']}) over {grid}"
    )


def merge_reports(paths, output_dir):
    """Joins the runs of several parts of one suite (the same datasets) and
    writes the table, JSON and plot of the whole."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    report = dict(
        parts[0],
        parts=[
            {
                "file": os.path.basename(p),
                "command": r["command"],
                "methods": r["methods"],
                "wall_seconds": r["wall_seconds"],
                "interrupted": bool(r.get("interrupted")),
            }
            for p, r in zip(paths, parts)
        ],
    )
    report["command"] = " ; ".join(r["command"] for r in parts)
    report["methods"] = list(dict.fromkeys(m for r in parts for m in r["methods"]))
    report["interrupted"] = any(r.get("interrupted") for r in parts)
    report["wall_seconds"] = sum(r["wall_seconds"] for r in parts)
    datasets = {}
    for r in parts:
        for d in r["datasets"]:
            merged = datasets.setdefault(d["key"], dict(d, runs=[]))
            # A run in a later part (e.g. a suite resumed in the same work
            # folder) replaces the same (method, seed) of an earlier one.
            again = {(x["method"], x["seed"]) for x in d["runs"]}
            merged["runs"] = [
                x for x in merged["runs"] if (x["method"], x["seed"]) not in again
            ]
            merged["runs"] += d["runs"]
            for record in ("tuning", "weights"):  # Each part's choices.
                if d.get(record):
                    merged[record] = dict(merged.get(record, {}), **d[record])
    report["datasets"] = [
        dict(d, summary=summarize(d["runs"])) for d in datasets.values()
    ]
    stem = os.path.join(
        output_dir,
        "accuracy_{}_{}_{}_{}".format(
            report["suite"], "_".join(datasets), report["backend"], report["date"][:10]
        ),
    )
    os.makedirs(output_dir, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    write_report(report, stem)
