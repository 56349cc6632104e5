"""The benchmarks' output files: JSON, a markdown table and a PNG.

Example:

```python
paths = write_outputs("results/gpu_suite_x", result, markdown, plot)
```
"""

import json
import os
import platform
import subprocess
import sys

import keras
import numpy as np

import keras_kd as kd


def write_outputs(stem, result, markdown, plot=None, log=print):
    """Writes `<stem>.json`, `<stem>.md` and, when `plot` is given and
    matplotlib is installed, `<stem>.png` (`plot(result, axes_factory)`
    draws it). Each text file is written whole, then renamed over the old
    one, so a kill mid-write leaves the previous version. Returns the paths
    written."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    _write_whole(stem + ".json", json.dumps(result, indent=1, default=_plain))
    _write_whole(stem + ".md", markdown + "\n")
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


def _write_whole(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _plain(value):
    """NumPy scalars and arrays as JSON values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


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
        if sys.modules.get(module) is not None:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return versions


def code_version(root):
    """The git commit of the checkout at `root` and the tracked files that
    differ from it (None where git or the checkout is missing), so that a
    result can be re-made on the same code."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        modified = git("diff", "--name-only", "HEAD").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "modified": modified}
