"""benchmarks/accuracy_plot.py: colours, the bars' order and limits, and
the curves' zoom on the second half of the epochs."""

import pytest
from helpers import load_benchmark


def test_plot_colours_are_distinct_and_refuse_more_methods_than_colours():
    plt = pytest.importorskip("matplotlib.pyplot")
    accuracy_plot = load_benchmark("accuracy_plot")
    names = [f"m{i}" for i in range(60)]
    colours = accuracy_plot._colours(names, plt)
    assert len(set(colours.values())) == 60
    with pytest.raises(ValueError, match="61 methods, 60 colours"):
        accuracy_plot._colours(names + ["one more"], plt)


def test_plot_orders_bars_best_first_within_tight_limits_and_zooms_the_curves():
    plt = pytest.importorskip("matplotlib.pyplot")
    accuracy_plot = load_benchmark("accuracy_plot")
    rows = [
        {"method": m, "last": v, "last_std": 0.002}
        for m, v in (("kd", 0.886), ("student", 0.883), ("afd", 0.891))
    ]
    runs = [
        {"method": r["method"], "seed": 0, "curve": [0.5, 0.8, 0.85, r["last"]]}
        for r in rows
    ]
    panel = {"title": "t", "rows": rows, "teacher": [], "runs": runs}
    figure, (bars, whole, late) = plt.subplots(1, 3)
    colours = accuracy_plot._colours([r["method"] for r in rows], plt)
    accuracy_plot._draw_bars(bars, panel, colours)
    accuracy_plot._draw_curves(whole, late, panel, colours)
    labels = [t.get_text() for t in bars.get_xticklabels()]
    assert labels == ["afd", "kd", "student"]
    low, high = bars.get_ylim()
    assert 87.5 <= low < 88.1 and 89.3 < high <= 90.0  # Tenths stay visible.
    # The legend follows the last epoch; the zoom keeps the second half.
    legend = [t.get_text() for t in late.get_legend().get_texts()]
    assert legend == ["afd", "kd", "student"]
    assert list(late.get_lines()[0].get_xdata()) == [3, 4]
    assert len(whole.get_lines()[0].get_xdata()) == 4
    plt.close(figure)
