"""Memory of a benchmark row: host RSS and accelerator bytes in use.

`MemorySampler` samples both from a thread while a row runs and keeps the
peak per row label.

Example:

```python
with MemorySampler() as sampler:
    sampler.label = "kd_logits"
    runner(x, y, 256)
    sampler.label = None
peak = sampler.peaks["kd_logits"]  # {"rss": bytes, "device": bytes or None}
```
"""

import os
import threading

import keras

from keras_kd import machine


def host_rss_bytes():
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_memory_bytes():
    """Bytes in use on the first accelerator, or None on CPU."""
    if machine.device_kind() == "cpu":
        return None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("bytes_in_use")
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.experimental.get_memory_info("GPU:0")["current"]
    return None


class MemorySampler:
    """Samples host RSS (and device memory) every `interval` seconds and
    keeps the maximum per label; `label = None` pauses the bookkeeping."""

    def __init__(self, interval=0.01):
        self.interval = interval
        self.label = None
        self.peaks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *args):
        self._stop.set()
        self._thread.join()

    def sample(self):
        label = self.label
        if label is None:
            return
        rss, device = host_rss_bytes(), device_memory_bytes()
        peak = self.peaks.setdefault(label, {"rss": 0, "device": None})
        peak["rss"] = max(peak["rss"], rss)
        if device is not None:
            peak["device"] = max(peak["device"] or 0, device)

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.sample()


def device_peak_bytes():
    """JAX's peak bytes in use on the first accelerator since the process
    began (it cannot be reset: not a per-row figure), or None."""
    if machine.device_kind() == "cpu" or keras.backend.backend() != "jax":
        return None
    import jax

    return (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
