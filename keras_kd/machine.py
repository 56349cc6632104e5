"""What machine a benchmark ran on (both benchmarks record it).

Example:

```python
from keras_kd import machine

print(machine.machine_info())  # {"host": ..., "device": "cpu", ...}
```
"""

import os
import platform
import socket

import keras


def device_kind():
    """`"cpu"`, or the accelerator platform Keras' backend runs on."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def device_description():
    """The accelerator (or CPU) model name, as the backend reports it."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if backend == "tensorflow" and device_kind() == "gpu":
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        details = tf.config.experimental.get_device_details(gpu)
        return details.get("device_name", gpu.name)
    return platform.processor() or platform.machine()


def machine_info(device=None):
    """`{"host", "platform", "cpu_count", "device", "device_name"}`;
    `device` overrides the detected kind (e.g. "see runs")."""
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device or device_kind(),
        "device_name": device_description(),
    }
