"""The benchmarks' output files: JSON, a markdown table and a PNG.

Example:

```python
paths = write_outputs("results/gpu_suite_x", result, markdown, plot)
```
"""

import json
import os
import platform
import sys

import keras
import numpy as np

import keras_kd as kd


def write_outputs(stem, result, markdown, plot=None, log=print):
    """Writes `<stem>.json`, `<stem>.md` and, when `plot` is given and
    matplotlib is installed, `<stem>.png` (`plot(result, axes_factory)`
    draws it). Returns the paths written."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown + "\n")
    paths = [stem + ".json", stem + ".md"]
    if plot is None:
        return paths
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no PNG written.")
        return paths
    figure = plot(result, plt)
    figure.savefig(stem + ".png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return paths + [stem + ".png"]


def summary(values):
    """Median, min, max and spread (% of the median) of a row's rates."""
    values = np.asarray(values, "float64")
    median = float(np.median(values))
    return {
        "median": median,
        "min": float(values.min()),
        "max": float(values.max()),
        "spread_pct": float(100 * (values.max() - values.min()) / median)
        if median
        else 0.0,
    }


def versions():
    """The versions of Python, Keras, keras_kd, NumPy and the imported
    backends."""
    versions = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_kd": kd.__version__,
        "numpy": np.__version__,
    }
    for module in ("tensorflow", "jax", "torch"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return versions
