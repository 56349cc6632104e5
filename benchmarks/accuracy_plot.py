"""The figure of `benchmarks/accuracy.py`'s reports: per panel, bars of
last-epoch test accuracy (mean ± std over seeds, the teacher as a dashed
reference line) beside the mean test-accuracy curve of every method.

A panel is one set of rows that share a task: `accuracy_report` gives a
dataset's 10-class rows one panel and its class-subset rows (another
task, on fewer classes) their own.

Example:

```python
panel = {"title": "digits", "rows": summary_rows, "teacher": [], "runs": runs}
plot([panel], "benchmarks/results/accuracy_cpu_digits.png")
```
"""

import numpy as np


def _colours(names, plt):
    """One colour per method: tab20, tab20b and tab20c give 60."""
    palette = [
        plt.get_cmap(name)(i)
        for name in ("tab20", "tab20b", "tab20c")
        for i in range(20)
    ]
    if len(names) > len(palette):
        raise ValueError(f"{len(names)} methods, {len(palette)} colours.")
    return {m: palette[i] for i, m in enumerate(names)}


def _draw_bars(bars, panel, colours):
    rows, teacher = panel["rows"], panel["teacher"]
    names = [r["method"] for r in rows]
    bars.bar(
        names,
        [100 * r["last"] for r in rows],
        yerr=[100 * r["last_std"] for r in rows],
        capsize=3,
        color=[colours[m] for m in names],
    )
    for r in teacher:
        bars.axhline(
            100 * r["last"],
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"teacher {100 * r['last']:.1f}%",
        )
        bars.legend(fontsize=7)
    bars.set_ylabel("last-epoch test accuracy %")
    bars.set_title(panel["title"])
    bars.set_xticks(range(len(names)))
    bars.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    low = min(100 * r["last"] for r in rows + teacher) if rows else 0
    bars.set_ylim(max(0, low - 10), 100)


def _draw_curves(curves, panel, colours):
    for method in (r["method"] for r in panel["rows"]):
        runs = [
            r["curve"]
            for r in panel["runs"]
            if r["method"] == method and r.get("curve")
        ]
        if not runs:
            continue
        length = min(map(len, runs))
        mean = np.mean([c[:length] for c in runs], axis=0)
        curves.plot(
            np.arange(1, length + 1), 100 * mean, label=method, color=colours[method]
        )
    curves.set_xlabel("epoch")
    curves.xaxis.get_major_locator().set_params(integer=True)
    curves.set_ylabel("test accuracy % (mean over seeds)")
    curves.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot(panels, path):
    """Writes one row of bars and curves per panel (a dict: `title`, the
    summary `rows` to draw, the `teacher` summary rows drawn as lines, and
    the `runs` that hold the curves) to `path`; returns False (printing
    why) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"matplotlib is not installed: no plot at {path} (pip install matplotlib)."
        )
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widest = max(len(p["rows"]) for p in panels)
    fig, axes = plt.subplots(
        len(panels),
        2,
        figsize=(max(12, 0.5 * widest + 8), 5 * len(panels)),
        squeeze=False,
    )
    for (bars, curves), panel in zip(axes, panels):
        colours = _colours([r["method"] for r in panel["rows"]], plt)
        _draw_bars(bars, panel, colours)
        _draw_curves(curves, panel, colours)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True
