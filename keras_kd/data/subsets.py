"""Class subsets of a dataset, relabelled `0..k-1` (SKD's tasks)."""

import numpy as np

from keras_kd._compat import tensorflow as tf


class ClassMapping:
    """How a class subset's labels `0..k-1` map to the original classes.

    Example:

    ```python
    mapping.to_original(np.argmax(model.predict(x), axis=-1))
    ```
    """

    def __init__(self, original_ids, names):
        self.original_ids = np.asarray(original_ids, "int64")
        self.names = list(names)

    def to_original(self, pred_ids):
        """Original class ids of subset labels (an array of the same shape)."""
        return self.original_ids[np.asarray(pred_ids)]

    def __repr__(self):
        pairs = ", ".join(
            f"{i}->{o} ({n})"
            for i, (o, n) in enumerate(zip(self.original_ids, self.names))
        )
        return f"ClassMapping({pairs})"


def class_subset(data, classes, max_per_class=None, seed=0, class_names=None):
    """Keeps the examples of `classes`, relabelled `0..len(classes) - 1`.

    `data` is `(x, y)` arrays or an unbatched `tf.data.Dataset` of `(x, y)`;
    `classes` lists original class ids, or names when `class_names` is
    given. Returns `(subset, ClassMapping)`, the subset of the same kind as
    `data`. With arrays the examples keep their order and `max_per_class`
    picks a random (`seed`) subset of each class; with a dataset it keeps
    the first `max_per_class` of each class in stream order (shuffle the
    dataset beforehand for a random pick), and without `class_names` class
    ids are only checked to be non-negative.

    Example:

    ```python
    (x, y), mapping = class_subset((x, y), ["cat", "dog"],
                                   class_names=info["class_names"])
    mapping.to_original([0, 1])  # array([3, 5])
    ```
    """
    if max_per_class is not None and (
        int(max_per_class) != max_per_class or max_per_class < 1
    ):
        raise ValueError(
            f"max_per_class must be a positive integer or None, got {max_per_class!r}."
        )
    is_dataset = not isinstance(data, (tuple, list)) and isinstance(
        data, tf.data.Dataset
    )
    if is_dataset:
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2 and spec[1].shape.rank == 0):
            raise ValueError(
                f"class_subset expects an unbatched dataset of (x, y) with "
                f"scalar labels; got element_spec {spec}."
            )
        num_classes = len(class_names) if class_names else None
    else:
        x, y = data
        y = np.asarray(y)
        num_classes = len(class_names) if class_names else int(y.max()) + 1
    ids = _class_ids(classes, class_names, num_classes)
    names = [class_names[i] for i in ids] if class_names else [str(i) for i in ids]
    mapping = ClassMapping(ids, names)
    if is_dataset:
        return _dataset_subset(data, ids, max_per_class), mapping
    rng = np.random.default_rng(seed)
    keep = []
    for class_id in ids:
        index = np.flatnonzero(y == class_id)
        if not len(index):
            raise ValueError(
                f"Class {class_id!r} has no examples in the data; present "
                f"classes: {np.unique(y).tolist()}."
            )
        if max_per_class is not None and len(index) > max_per_class:
            index = rng.choice(index, max_per_class, replace=False)
        keep.append(index)
    keep = np.sort(np.concatenate(keep))
    lookup = np.full(max(ids) + 1, -1, "int64")
    lookup[ids] = np.arange(len(ids))
    return (np.asarray(x)[keep], lookup[y[keep]]), mapping


def _class_ids(classes, class_names, num_classes):
    ids = []
    for c in classes:
        if isinstance(c, str):
            if not class_names or c not in class_names:
                valid = (
                    f"valid names: {list(class_names)}"
                    if class_names
                    else "pass class_names= to select classes by name"
                )
                raise ValueError(f"Unknown class {c!r}; {valid}.")
            c = list(class_names).index(c)
        elif (
            not isinstance(c, (int, np.integer))
            or c < 0
            or (num_classes is not None and c >= num_classes)
        ):
            valid = (
                f"0..{num_classes - 1}"
                if num_classes is not None
                else "non-negative integers"
            )
            raise ValueError(f"Unknown class {c!r}; valid class ids: {valid}.")
        ids.append(int(c))
    if len(set(ids)) != len(ids) or not ids:
        raise ValueError(f"classes must be distinct and non-empty; got {classes}.")
    return ids


def _dataset_subset(ds, ids, max_per_class):
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, "int64"), tf.range(len(ids), dtype="int64")
        ),
        default_value=-1,
    )
    ds = ds.map(lambda x, y: (x, table.lookup(tf.cast(y, "int64"))))
    ds = ds.filter(lambda x, y: y >= 0)
    if max_per_class is None:
        return ds

    def count(counts, example):
        _, y = example
        counts = tf.tensor_scatter_nd_add(counts, [[y]], [1])
        return counts, (example, counts[y])

    ds = ds.scan(tf.zeros(len(ids), "int64"), count)
    ds = ds.filter(lambda example, seen: seen <= max_per_class)
    return ds.map(lambda example, seen: example)
