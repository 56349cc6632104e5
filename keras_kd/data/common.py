"""NumPy pieces shared by the loaders and the host input pipelines.

`epoch_order` and `steps_per_epoch` say which examples each batch of an
epoch holds (for `tf.data`, `kd.data.EpochBatches` and `kd.offline`);
`mean_std` reads a `normalize` argument; `dataset_info` is the dict every
loader returns.
"""

import math

import numpy as np


def epoch_order(num_examples, epoch, seed=0, shuffle=True):
    """The order in which epoch `epoch` visits `range(num_examples)`.

    A permutation that depends only on `(seed, epoch)`, or `range` itself
    when `shuffle` is false.

    Example:

    ```python
    order = epoch_order(len(x), epoch=3, seed=0)
    ```
    """
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def steps_per_epoch(num_examples, batch_size, drop_remainder=False):
    """Batches per epoch: the last one partial, or dropped with
    `drop_remainder`."""
    if drop_remainder:
        return num_examples // batch_size
    return math.ceil(num_examples / batch_size)


def steps_per_call(steps, most=8):
    """The largest divisor of `steps` up to `most`, as `steps_per_execution`.

    Keras counts an epoch in calls of `steps_per_execution` steps: with a
    value that does not divide the epoch's steps, each epoch takes a few
    batches of the next (430 steps in calls of 8 take 432), so epochs
    drift over the data, a resumed run starts at the wrong batch and the
    last epoch is cut short ("Your input ran out of data").

    Example: `steps_per_call(430)` → 5, `steps_per_call(469)` → 7.
    """
    return max(d for d in range(1, most + 1) if steps % d == 0)


def mean_std(normalize):
    """float32 `(mean, std)` of `normalize=(mean, std)` on the 0..255 scale;
    None (scaling to 0..1) gives `(0, 255)`."""
    if normalize is None:
        return np.zeros(1, "float32"), np.full(1, 255.0, "float32")
    return tuple(np.asarray(v, "float32") for v in normalize)


def dataset_info(num_classes, class_names, input_shape, source):
    """The `info` dict every loader returns."""
    return {
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "input_shape": tuple(int(d) for d in input_shape),
        "source": source,
    }
