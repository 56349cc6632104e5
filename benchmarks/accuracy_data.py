"""The data folders of `benchmarks/accuracy.py`: held-out and subset splits.

Each function writes npz folders (`train.npz`, `test.npz`) that the recipes
read with `--dataset=npz:FOLDER`, under the suite's work folder (never
into the repository), and returns them; a folder already written is reused.

Example:

```python
train_folder, validation_folder = digits_heldout("/tmp/work", 300)
```
"""

import os

import numpy as np


def stratified_split(y, count, rng, exclude=()):
    """`count` indices of `y`, the same number per class, none in `exclude`."""
    classes = np.unique(y)
    free = np.setdiff1d(np.arange(len(y)), np.asarray(exclude, int))
    picked = np.concatenate(
        [
            rng.choice(free[y[free] == c], count // len(classes), replace=False)
            for c in classes
        ]
    )
    return rng.permutation(picked)  # Mixed classes in every prefix.


def digits_heldout(work_dir, val):
    """scikit-learn digits' training split less a stratified validation
    split, with the test split (folder one) or the validation split as its
    `test` (folder two), written under `work_dir`; returns the folders."""
    from keras_kd import data

    out = os.path.join(work_dir, "digits_heldout")
    out_val = os.path.join(work_dir, f"digits_heldout_val{val}")
    if os.path.exists(os.path.join(out_val, "test.npz")):
        return out, out_val
    (x, y), (x_test, y_test), _ = data.load("digits")
    held = stratified_split(y, val, np.random.default_rng(0))
    keep = np.setdiff1d(np.arange(len(y)), held)  # Keeps the order.
    for folder, (tx, ty) in ((out, (x_test, y_test)), (out_val, (x[held], y[held]))):
        os.makedirs(folder, exist_ok=True)
        np.savez(os.path.join(folder, "train.npz"), x=x[keep], y=y[keep])
        np.savez(os.path.join(folder, "test.npz"), x=tx, y=ty)
    return out, out_val


def fashion_subset(source, work_dir, train, val):
    """Writes a class-stratified training subset of an npz dataset folder
    with its test split (folder one) and the same training subset with a
    stratified validation split as its `test` (folder two) under
    `work_dir`; returns the two folders. The validation images are training
    images outside the subset (inside it when the subset is everything)."""
    out = os.path.join(work_dir, f"fashion_mnist_{train}")
    out_val = os.path.join(work_dir, f"fashion_mnist_{train}_val{val}")
    if os.path.exists(os.path.join(out_val, "test.npz")):
        return out, out_val
    rng = np.random.default_rng(0)
    data = np.load(os.path.join(source, "train.npz"))
    x, y = data["x"], data["y"]
    picked = stratified_split(y, train, rng)
    rest = stratified_split(y, val, rng, exclude=(picked if train < len(y) else ()))
    if train >= len(y):
        picked = np.setdiff1d(picked, rest)
    test = np.load(os.path.join(source, "test.npz"))
    for folder, (tx, ty) in (
        (out, (test["x"], test["y"])),
        (out_val, (x[rest], y[rest])),
    ):
        os.makedirs(folder, exist_ok=True)
        np.savez(os.path.join(folder, "train.npz"), x=x[picked], y=y[picked])
        np.savez(os.path.join(folder, "test.npz"), x=tx, y=ty)
    return out, out_val
