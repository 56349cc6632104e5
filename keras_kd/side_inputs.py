"""Per-example side inputs: batches given as `{"inputs": images, name: ...}`.

Terms (e.g. CRD's `"example_index"`) and teachers (a
`kd.offline.RecordedTeacher`'s recorded targets) declare the entries they
read in `side_inputs`; `kd.Distiller` feeds `x["inputs"]` to the models and
the named entries to their readers.

Example:

```python
distiller.fit(kd.data.with_example_index(x_train), y_train)
```
"""

import keras


def batch_keys(x):
    """The entry names of a `fit` input: a dict, a `tf.data.Dataset` or a
    `keras.utils.PyDataset` of `(x, y)`; None when `x` is not a dict."""
    if isinstance(x, keras.utils.PyDataset):
        x = x[0][0]
    spec = getattr(x, "element_spec", None)  # A tf.data.Dataset.
    if spec is not None:
        x = spec[0] if isinstance(spec, tuple) else spec
    return list(x) if isinstance(x, dict) else None


def check(names, readers, keys):
    """Raises a ValueError when a batch with entries `keys` (None: not a
    dict) lacks `"inputs"` or one of `names`, read by `readers`."""
    needed = ["inputs"] + list(names)
    missing = needed if keys is None else [k for k in needed if k not in keys]
    if missing:
        raise ValueError(
            f"The terms or teachers {readers} read {list(names)} from each "
            f"batch, but x has no {missing}. Give x as a dict "
            f"{{'inputs': images, name: ...}}, e.g. "
            f"fit(kd.data.with_example_index(x_train), y_train) for example "
            f"indices, or fit(kd.offline.dataset(x, y, batch_size, "
            f"record=path)) for a kd.offline.RecordedTeacher."
        )
