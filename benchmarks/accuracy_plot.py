"""The figure of `benchmarks/accuracy.py`'s reports: per panel, bars of
last-epoch test accuracy (mean ± std over seeds, best first, the teacher
as a dashed reference line) beside the mean test-accuracy curve of every
method, whole and over the second half of the epochs (where methods that
differ by tenths of a point can be told apart; its legend ordered by the
last epoch's accuracy).

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
    teacher = panel["teacher"]
    rows = sorted(panel["rows"], key=lambda r: -r["last"])
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
    if rows:
        low = min(100 * (r["last"] - r["last_std"]) for r in rows)
        high = max(100 * (r["last"] + r["last_std"]) for r in rows + teacher)
        margin = max(0.5, 0.1 * (high - low))
        bars.set_ylim(max(0, low - margin), min(100, high + margin))


def _mean_curves(panel):
    """`{method: mean test-accuracy curve over its seeds}` (the shortest
    run's length), in the panel's row order; methods without curves left
    out."""
    means = {}
    for method in (r["method"] for r in panel["rows"]):
        runs = [
            r["curve"]
            for r in panel["runs"]
            if r["method"] == method and r.get("curve")
        ]
        if runs:
            length = min(map(len, runs))
            means[method] = 100 * np.mean([c[:length] for c in runs], axis=0)
    return means


def _draw_curves(whole, late, panel, colours):
    means = _mean_curves(panel)
    for method in sorted(means, key=lambda m: -means[m][-1]):
        mean = means[method]
        epochs = np.arange(1, len(mean) + 1)
        whole.plot(epochs, mean, color=colours[method])
        start = len(mean) // 2
        late.plot(epochs[start:], mean[start:], label=method, color=colours[method])
    for axis in (whole, late):
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
    whole.set_ylabel("test accuracy % (mean over seeds)")
    late.set_title("second half of the epochs", fontsize=9)
    late.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot(panels, path):
    """Writes one row of bars and two curve plots per panel (a dict: `title`, the
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
        3,
        figsize=(max(16, 0.5 * widest + 12), 5 * len(panels)),
        squeeze=False,
    )
    for (bars, whole, late), panel in zip(axes, panels):
        colours = _colours([r["method"] for r in panel["rows"]], plt)
        _draw_bars(bars, panel, colours)
        _draw_curves(whole, late, panel, colours)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True
