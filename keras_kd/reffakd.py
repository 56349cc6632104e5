"""ReffAKD: soft labels from a tiny autoencoder, no teacher (docs/methods.md §5).

Doshi & Kim, arXiv 2404.09886. Train a ~47k-parameter convolutional
autoencoder on the images, average the cosine similarity of its bottleneck
codes between classes, and turn each row into a soft-label distribution
that takes the teacher's place in logit distillation.

Example:

```python
autoencoder, cost = kd.reffakd.train_autoencoder(x_train, x_val, epochs=200)
similarity = kd.reffakd.class_similarity(autoencoder.encoder, x_train, y_train)
table = kd.reffakd.soft_label_table(similarity)
alpha, temperature = 0.9, 4.0
distiller = kd.Distiller(
    kd.SoftLabelTeacher(table), student,
    kd.losses.LogitsDistillation(temperature=temperature),
    student_loss_weight=1.0 - alpha)
# total = (1 − α)·CE + α·T²·KL(table[y] ‖ softmax(z_s / T))
```
"""

import time

import keras
import numpy as np
from keras import layers

from keras_kd.models.common import l2


@keras.saving.register_keras_serializable(package="keras_kd")
class Autoencoder(keras.Model):
    """ReffAKD's convolutional autoencoder; the bottleneck is `encoder`'s output.

    Encoder `Conv(C→12) → ReLU → Conv(12→24) → ReLU → Conv(24→48) → ReLU`,
    decoder mirrored with transposed convolutions, ReLU between, sigmoid
    output; every convolution has kernel 4, stride 2 and `"same"` padding
    (PyTorch's `padding=1` for even sizes). Each stage halves H and W, so
    H and W must be multiples of 8: a 32×32×3 image gives a 4×4×48 code
    (768-d, 47,355 parameters) and an 8×8×1 digit a 1×1×48 code (48-d,
    46,585 parameters). Inputs are expected in [0, 1].

    Args:
        input_shape: `(H, W, C)` of the images.
        weight_decay: coupled L2 on every kernel and bias, as PyTorch SGD's
            `weight_decay` (`wd/2 · Σw²`).

    Example:

    ```python
    autoencoder = Autoencoder((8, 8, 1))
    codes = autoencoder.encoder(x)  # (batch, 1, 1, 48)
    ```
    """

    def __init__(self, input_shape, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        height, width, channels = input_shape
        if height % 8 or width % 8:
            raise ValueError(
                f"The autoencoder halves H and W three times, so both must be "
                f"multiples of 8; got input_shape={tuple(input_shape)}."
            )
        self.image_shape = tuple(input_shape)
        self.weight_decay = weight_decay

        def conv(layer, filters, activation):
            return layer(
                filters, 4, strides=2, padding="same", activation=activation,
                kernel_regularizer=l2(weight_decay),
                bias_regularizer=l2(weight_decay),
            )

        self.encoder = keras.Sequential(
            [keras.Input(self.image_shape)]
            + [conv(layers.Conv2D, f, "relu") for f in (12, 24, 48)],
            name="encoder",
        )
        self.decoder = keras.Sequential(
            [keras.Input(self.encoder.output_shape[1:])]
            + [conv(layers.Conv2DTranspose, f, "relu") for f in (24, 12)]
            + [conv(layers.Conv2DTranspose, channels, "sigmoid")],
            name="decoder",
        )
        self.build((None,) + self.image_shape)

    def call(self, inputs, training=None):
        return self.decoder(self.encoder(inputs, training=training),
                            training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": self.image_shape,
            "weight_decay": self.weight_decay,
        }


def train_autoencoder(x_train, x_val, epochs, batch_size=128,
                      learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                      verbose=0):
    """Trains an `Autoencoder` to reconstruct images (MSE), as ReffAKD.

    SGD with momentum and coupled L2 `weight_decay` (the paper: lr 0.1,
    momentum 0.9, wd 5e-4, 200 epochs, batch 128; its code also divides
    the rate by 5 at epochs 60/120/160, which a
    `keras.optimizers.schedules` object as `learning_rate` reproduces).
    The weights of the epoch with the lowest validation MSE are kept.

    Args:
        x_train: training images `(N, H, W, C)` in [0, 1].
        x_val: validation images for checkpoint selection.
        epochs: training epochs.

    Returns:
        `(autoencoder, cost)`: the autoencoder with its best weights, and
        `cost = {"params", "train_seconds", "val_mse"}`, the compute to set
        against training a teacher, and the kept epoch's validation MSE.

    Example:

    ```python
    autoencoder, cost = train_autoencoder(x_train, x_test, epochs=20)
    ```
    """
    x_train = np.asarray(x_train, "float32")
    x_val = np.asarray(x_val, "float32")
    autoencoder = Autoencoder(x_train.shape[1:], weight_decay=weight_decay)
    autoencoder.compile(
        keras.optimizers.SGD(learning_rate, momentum=momentum),
        loss="mse",
        metrics=["mse"],
    )
    best = keras.callbacks.EarlyStopping(
        "val_mse", patience=epochs, restore_best_weights=True
    )
    start = time.perf_counter()
    autoencoder.fit(
        x_train, x_train, batch_size=batch_size, epochs=epochs,
        validation_data=(x_val, x_val), callbacks=[best], verbose=verbose,
    )
    cost = {
        "params": autoencoder.count_params(),
        "train_seconds": time.perf_counter() - start,
        "val_mse": best.best,
    }
    return autoencoder, cost


def class_similarity(encoder, x, y, per_class=40, diagonal_boost=0.0225,
                     seed=0):
    """ReffAKD's class-similarity matrix from bottleneck codes.

    Samples `per_class` images of each class (seeded), encodes them, and
    averages the cosine similarity of every unordered pair of distinct
    sampled images into its (class_i, class_j) cell (both cells; a
    same-class pair into the diagonal); then adds `diagonal_boost` to the
    diagonal (0.0225 in the paper, 0.008 for Fashion-MNIST).

    Args:
        encoder: a model mapping images to codes (flattened here), e.g.
            `Autoencoder.encoder`.
        x: images.
        y: integer labels `0..C−1`.

    Returns:
        A symmetric float64 `(C, C)` NumPy array.

    Example:

    ```python
    similarity = class_similarity(autoencoder.encoder, x_train, y_train)
    ```
    """
    if per_class < 2:
        raise ValueError(
            f"per_class must be at least 2 so that every class has a pair "
            f"of its own images; got {per_class}."
        )
    y = np.asarray(y).reshape(-1)
    num_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(
                f"Class {c} has {len(members)} images; class_similarity "
                f"samples per_class={per_class} of each class."
            )
        picked.append(rng.choice(members, per_class, replace=False))
    picked = np.concatenate(picked)
    codes = encoder.predict(np.asarray(x)[picked], verbose=0)
    codes = np.asarray(codes, "float64").reshape(len(picked), -1)
    norms = np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-8)
    codes = codes / norms
    # Each unordered pair once (i < j), added to its class cell.
    upper = np.triu(np.ones((len(picked),) * 2), k=1)
    one_hot = np.eye(num_classes)[y[picked]]
    sums = one_hot.T @ (upper * (codes @ codes.T)) @ one_hot
    counts = one_hot.T @ upper @ one_hot
    similarity = (sums + sums.T) / (counts + counts.T)
    return similarity + diagonal_boost * np.eye(num_classes)


def soft_label_table(similarity):
    """Row-wise softmax of a class-similarity matrix: ReffAKD's soft labels.

    Row `y` is the target distribution for class `y`, as used by
    `kd.SoftLabelTeacher(table)`.

    Example:

    ```python
    table = soft_label_table(class_similarity(encoder, x_train, y_train))
    ```
    """
    similarity = np.asarray(similarity, "float64")
    exp = np.exp(similarity - similarity.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype("float32")
