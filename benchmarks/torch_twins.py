"""PyTorch twins of the zoo's CIFAR ResNets and a plain eager KD loop.

The PyTorch rows of `benchmarks/throughput.py` and `gpu_suite.py` train the
same networks as the Keras rows (same trainable sizes, tested), so their
images/s compare loops, not models.

Example:

```python
runner = build_torch_runner(keras_teacher, keras_student)
seconds = runner(x, y, batch_size=256)  # x: NHWC float32 NumPy
```
"""

import importlib.util
import time

import keras
import numpy as np


def _torch_resnet(name, num_classes, channels=3):
    """The zoo's CIFAR ResNets (post-activation BasicBlock) in PyTorch."""
    import torch.nn as nn

    if not name.startswith("resnet"):
        return None
    spec = name[len("resnet") :]
    wide = spec.endswith("x4")
    depth = int(spec[:-2] if wide else spec)
    n = (depth - 2) // 6
    widths = [32, 64, 128, 256] if wide else [16, 16, 32, 64]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = self.bn1(self.conv1(x)).relu()
            y = self.bn2(self.conv2(y))
            return (y + self.shortcut(x)).relu()

    layers = [
        nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    cin = widths[0]
    for stage, cout in enumerate(widths[1:]):
        for index in range(n):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(Block(cin, cout, stride))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


class TorchRunner:
    """A plain eager PyTorch KD loop: `0.1·CE + 0.9·T²·KL`, SGD momentum."""

    def __init__(
        self,
        teacher,
        student,
        mixed_precision,
        clock=time.perf_counter,
        temperature=4.0,
    ):
        import torch

        self.clock, self.temperature = clock, temperature
        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        fmt = torch.channels_last
        self.teacher = teacher.to(self.device, memory_format=fmt).eval()
        self.student = student.to(self.device, memory_format=fmt).train()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=1e-4, momentum=0.9
        )
        self.autocast_dtype = None
        if mixed_precision:
            self.autocast_dtype = torch.float16 if self.cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.cuda and mixed_precision
        )

    def __call__(self, x, y, batch_size):
        torch = self.torch
        nn_f = torch.nn.functional
        xs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        ys = torch.from_numpy(y.astype("int64"))
        start = self.clock()
        for i in range(0, len(xs), batch_size):
            xb = (
                xs[i : i + batch_size]
                .to(self.device)
                .contiguous(memory_format=torch.channels_last)
            )
            yb = ys[i : i + batch_size].to(self.device)
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype,
                enabled=self.autocast_dtype is not None,
            ):
                with torch.no_grad():
                    z_t = self.teacher(xb)
                z_s = self.student(xb)
            z_s, z_t = z_s.float(), z_t.float()
            kl = nn_f.kl_div(
                nn_f.log_softmax(z_s / self.temperature, -1),
                nn_f.log_softmax(z_t / self.temperature, -1),
                reduction="batchmean",
                log_target=True,
            )
            loss = 0.1 * nn_f.cross_entropy(z_s, yb) + (0.9 * self.temperature**2 * kl)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        loss.item()
        if self.cuda:
            torch.cuda.synchronize()
        return self.clock() - start


def torch_installed():
    return importlib.util.find_spec("torch") is not None


def build_torch_runner(teacher, student, clock=time.perf_counter, temperature=4.0):
    """A `TorchRunner` on the twins of two zoo ResNets, or why not (str)."""
    if not torch_installed():
        return "PyTorch is not installed"
    num_classes, channels = student.output.shape[-1], student.input.shape[-1]
    t = _torch_resnet(teacher.name, num_classes, channels)
    s = _torch_resnet(student.name, num_classes, channels)
    if t is None or s is None:
        return "PyTorch twins exist for the zoo's CIFAR ResNets only"
    return TorchRunner(
        t,
        s,
        keras.mixed_precision.global_policy().name != "float32",
        clock,
        temperature,
    )
