"""Host input pipelines (`tf.data`, usable with every Keras backend).

`epoch_batches` is deterministic per `(seed, epoch)`: a resumed run sees the
batches of an uninterrupted one (what `keras_kd.training` uses).
`make_dataset` is the plain reshuffling pipeline. Both augment with the
same stateless `crop_flip_batch` and normalise with `(pixels - mean) / std`.
"""

import numpy as np

from keras_kd._compat import tensorflow as tf
from keras_kd.data import pydataset
from keras_kd.data.augment import crop_flip_batch
from keras_kd.data.common import epoch_order
from keras_kd.data.common import mean_std


def channel_stats(x):
    """Per-channel mean and standard deviation of NHWC images, as float32.

    Example:

    ```python
    mean, std = channel_stats(x_train)
    ds = make_dataset(x_train, y_train, 128, True, normalize=(mean, std))
    ```
    """
    channels = x.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].reshape(-1, channels).astype("float64")
        total += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
    count = x.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.astype("float32"), std.astype("float32")


def with_example_index(x):
    """`{"inputs": x, "example_index": 0..len(x)-1}` for terms that need it.

    Instance-level terms such as `kd.losses.ContrastiveRepresentation`
    (CRD) keep one memory slot per training image and read the batch's
    dataset positions; the Distiller feeds `"inputs"` to the models.

    Example:

    ```python
    distiller.fit(kd.data.with_example_index(x_train), y_train, epochs=5)
    ```
    """
    if isinstance(x, dict):
        raise ValueError("with_example_index takes the image array itself, not a dict.")
    return {"inputs": x, "example_index": np.arange(len(x), dtype="int32")}


def make_dataset(
    x,
    y,
    batch_size,
    training,
    seed=0,
    augment=None,
    normalize=None,
    cache=True,
    example_index=False,
    input_pipeline="auto",
    **pydataset_kwargs,
):
    """A `tf.data` pipeline of `(float32 images, labels)` batches.

    Caches the uint8 data, and for training shuffles it (with `seed`, in a
    new order each epoch), drops the last partial batch and applies random
    crop (4-pixel zero padding) and horizontal flip when `augment` is true.
    Images are normalised per channel with `normalize=(mean, std)` (on the
    0..255 scale, see `channel_stats`), or scaled to 0..1 when `normalize`
    is None. With `example_index`, the inputs are
    `{"inputs": images, "example_index": positions in x}` (see
    `with_example_index`).

    Example:

    ```python
    train_ds = make_dataset(x, y, 128, training=True, augment=True,
                            normalize=channel_stats(x))
    model.fit(train_ds, epochs=10)
    ```

    `input_pipeline` (see `resolve_input_pipeline`): `"numpy"`, or `"auto"`
    without TensorFlow, returns a `kd.data.EpochBatches` PyDataset with the
    same semantics instead (a new order per epoch from `seed`, NumPy crop +
    flip); `pydataset_kwargs` (`workers`, ...) go to it.
    """
    if pydataset.resolve_input_pipeline(input_pipeline) == "numpy":
        return pydataset.EpochBatches(
            x,
            y,
            batch_size,
            seed=seed,
            augment=bool(training and augment),
            normalize=normalize,
            shuffle=training,
            drop_remainder=training,
            example_index=example_index,
            **pydataset_kwargs,
        )
    if example_index:  # Carried with the labels through the maps below.
        y = (y, np.arange(len(x), dtype="int32"))
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    mean, std = mean_std(normalize)
    ds = ds.map(lambda images, labels: (tf.cast(images, "float32"), labels))
    if training and augment:
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (crop_flip_batch(batch[0], s), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.map(
        lambda images, labels: ((images - mean) / std, labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if example_index:
        ds = ds.map(
            lambda images, labels: (
                {"inputs": images, "example_index": labels[1]},
                labels[0],
            )
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_batches(
    x,
    y,
    batch_size,
    steps,
    epochs,
    first_epoch=0,
    seed=0,
    augment=False,
    normalize=None,
):
    """Normalised `(images, labels)` batches of epochs `first_epoch..`.

    `steps` batches per epoch in the order of `epoch_order`; the last batch
    of an epoch may be smaller (as PyTorch's DataLoader) unless `steps`
    drops it. With `augment`, batch `i` (counted from epoch 0) is cropped
    and flipped with the seed `(seed, i)`, so resuming changes nothing.
    """
    perms = [epoch_order(len(x), epoch, seed) for epoch in range(first_epoch, epochs)]
    x_const, y_const = tf.constant(x), tf.constant(y)
    mean, std = (tf.constant(v) for v in mean_std(normalize))
    batches = []
    for perm in perms:
        for step in range(steps):
            batches.append(perm[step * batch_size : (step + 1) * batch_size])
    lengths = [len(b) for b in batches]
    flat = np.concatenate(batches) if batches else np.zeros(0, "int64")
    # A ragged list of batches: (start, length) into `flat`.
    starts = np.cumsum([0] + lengths[:-1]).astype("int64")
    flat_const = tf.constant(flat, "int64")
    global_step0 = first_epoch * steps

    def gather(i, start, length):
        index = flat_const[start : start + length]
        images = tf.cast(tf.gather(x_const, index), "float32")
        labels = tf.gather(y_const, index)
        if augment:
            images = crop_flip_batch(
                images, tf.stack([tf.cast(seed, "int64"), global_step0 + i])
            )
        return (images - mean) / std, labels

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(batches), dtype="int64"), starts, np.asarray(lengths, "int64"))
    )
    return ds.map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)
