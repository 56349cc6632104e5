"""The negatives of CRD (`kd.losses.ContrastiveRepresentation`), drawn
in-graph from a `keras.random.SeedGenerator`.

- `other_class`: RepDistiller's default `mode='exact'`
  (`dataset/cifar100.py` l.159-168): `K` images of other classes than the
  anchor's, without replacement unless its class leaves fewer than `K`;
  with `replacement=True` always with replacement (mdistiller's ImageNet
  sampler, `mdistiller/dataset/imagenet.py` l.62).
- `uniform`: `K` images other than the anchor, uniformly with
  replacement (RepDistiller's `ContrastMemory` when no indices are given,
  `crd/memory.py` l.35-37, minus the anchor itself).

Example:

```python
rows = crd_negatives.other_class(bank, anchor_labels, 16384, seed_generator)
```
"""

import keras
from keras import ops


def uniform(index, num_data, k, seed):
    """`(batch, k)` rows drawn uniformly, with replacement, from the
    `num_data − 1` rows other than each anchor's `index`."""
    draws = keras.random.randint(
        (ops.shape(index)[0], k), 0, num_data - 1, seed=seed, dtype="int32"
    )
    # Skipping the anchor's own row: uniform over the other rows.
    return draws + ops.cast(draws >= index[:, None], "int32")


def other_class(bank, anchor_labels, k, seed, replacement=None):
    """`(batch, k)` rows whose label in `bank` (one int per dataset row; −1
    for a row not seen yet, which counts as another class) differs from
    each anchor's label.

    Without replacement (a uniformly random `k`-subset) where the anchor's
    class leaves at least `k` such rows, else with replacement (the
    official rule); `replacement=True`: always with replacement, at
    `O(batch · k)` instead of `O(batch · num_data)`.
    """
    num_data = bank.shape[0]
    drawn = _with_replacement(bank, anchor_labels, k, seed)
    if replacement or k > num_data:
        return drawn
    same = ops.equal(bank[None, :], anchor_labels[:, None])
    keys = keras.random.uniform((ops.shape(anchor_labels)[0], num_data), seed=seed)
    # Other-class rows have keys in [0, 1), the anchor's class −1: the k
    # largest keys are a uniformly random k-subset of the other classes.
    _, subset = ops.top_k(ops.where(same, -1.0, keys), k)
    others = num_data - ops.sum(ops.cast(same, "int32"), axis=1)
    return ops.where((others < k)[:, None], drawn, ops.cast(subset, "int32"))


def _with_replacement(bank, anchor_labels, k, seed):
    """`(batch, k)` other-class rows with replacement: uniform positions in
    the label-sorted rows, skipping the block of the anchor's class."""
    num_data = bank.shape[0]
    order = ops.cast(ops.argsort(bank), "int32")
    sorted_labels = ops.take(bank, order)
    start = ops.cast(
        ops.searchsorted(sorted_labels, anchor_labels, side="left"), "int32"
    )
    end = ops.cast(
        ops.searchsorted(sorted_labels, anchor_labels, side="right"), "int32"
    )
    others = ops.maximum(num_data - (end - start), 1)  # None: draws stay in class.
    draws = keras.random.randint(
        (ops.shape(anchor_labels)[0], k), 0, 2**31 - 1, seed=seed, dtype="int32"
    )
    # The modulo's bias is below others / 2³¹ (2e-5 at 50 000 rows).
    position = draws % others[:, None]
    position = (
        position
        + ops.cast(position >= start[:, None], "int32") * (end - start)[:, None]
    )
    return ops.take(order, ops.minimum(position, num_data - 1))
