"""SGD and Adam with PyTorch's coupled L2 weight decay.

`torch.optim.SGD(weight_decay=wd)` (and `Adam`) adds `wd·w` to the gradient
of *every* parameter it is given before the momentum (or moment) update.
The CIFAR codes hand it every trainable parameter: the student's kernels,
biases and BN γ/β, and the trainable heads of the terms. Keras' own
`weight_decay` is decoupled (applied beside the update, as AdamW) and
kernel regularizers cover only kernels; these optimizers decay exactly the
variables they train: `Distiller.trainable_variables` (student and terms;
teachers are frozen).

Example:

```python
optimizer = keras_kd.optimizers.SGD(0.05, momentum=0.9, l2=5e-4)
distiller.compile(optimizer=optimizer)
```
"""

import keras
from keras import ops


class _CoupledL2:
    """Adds `l2·w` to each gradient before the parent's update step."""

    def _init_l2(self, l2):
        if l2 < 0:
            raise ValueError(f"l2 (the coupled weight decay) must be >= 0, got {l2}.")
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(
                gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable)
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="keras_kd")
class SGD(_CoupledL2, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with `torch.optim.SGD`'s `weight_decay=l2`.

    Per variable: `g ← g + l2·w`, then Keras' momentum step (`m ← μm − ηg`,
    `w ← w + m`), which equals PyTorch's (`b ← μb + g`, `w ← w − ηb`) while
    the learning rate is constant (across a step decay Keras' velocity
    keeps the old rate's scale for the momentum part).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self._init_l2(l2)


@keras.saving.register_keras_serializable(package="keras_kd")
class Adam(_CoupledL2, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with `torch.optim.Adam`'s `weight_decay=l2`
    (added to the gradient, not AdamW's decoupled decay)."""

    def __init__(self, learning_rate=0.001, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._init_l2(l2)
