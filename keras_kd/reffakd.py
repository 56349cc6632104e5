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
import warnings

import keras
import numpy as np
from keras import layers

from keras_kd.data import RandomPaddedCrop
from keras_kd.data import flip_rotation
from keras_kd.data import steps_per_epoch
from keras_kd.models.common import l2
from keras_kd.training import step_schedule


@keras.saving.register_keras_serializable(package="keras_kd")
class Autoencoder(keras.Model):
    """ReffAKD's convolutional autoencoder; the bottleneck is `encoder`'s output.

    Encoder `Conv(C→12) → ReLU → Conv(12→24) → ReLU → Conv(24→48) → ReLU`,
    decoder mirrored with transposed convolutions, ReLU between, sigmoid
    output; every convolution has kernel 4, stride 2 and `"same"` padding
    (PyTorch's `padding=1` for even sizes). Each stage halves H and W, so
    H and W must be multiples of 8: a 32×32×3 image gives a 4×4×48 code
    (768-d, 47,355 parameters) and an 8×8×1 digit a 1×1×48 code (48-d,
    46,585 parameters). Inputs are expected in [0, 1]; with `mean` and
    `std` the encoder first normalises them per channel (a weight-free
    `Normalization` layer), as the official code feeds normalised images.

    Args:
        input_shape: `(H, W, C)` of the images.
        weight_decay: coupled L2 on every kernel and bias, as PyTorch SGD's
            `weight_decay` (`wd/2 · Σw²`).
        mean: per-channel mean of the [0, 1] images, or None.
        std: per-channel standard deviation, with `mean`.

    Example:

    ```python
    autoencoder = Autoencoder((8, 8, 1))
    codes = autoencoder.encoder(x)  # (batch, 1, 1, 48)
    ```
    """

    def __init__(self, input_shape, weight_decay=0.0, mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if (mean is None) != (std is None):
            raise ValueError(
                "Autoencoder normalises its inputs with both `mean` and "
                "`std`; pass both or neither."
            )
        height, width, channels = input_shape
        if height % 8 or width % 8:
            raise ValueError(
                f"The autoencoder halves H and W three times, so both must be "
                f"multiples of 8; got input_shape={tuple(input_shape)}."
            )
        self.image_shape = tuple(input_shape)
        self.weight_decay = weight_decay
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(v) for v in std]
        normalize = []
        if mean is not None:
            normalize = [
                layers.Normalization(
                    mean=self.mean,
                    variance=np.square(self.std).tolist(),
                    name="normalize",
                )
            ]

        def conv(layer, filters, activation):
            return layer(
                filters,
                4,
                strides=2,
                padding="same",
                activation=activation,
                kernel_regularizer=l2(weight_decay),
                bias_regularizer=l2(weight_decay),
            )

        self.encoder = keras.Sequential(
            [keras.Input(self.image_shape)]
            + normalize
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
        return self.decoder(self.encoder(inputs, training=training), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": self.image_shape,
            "weight_decay": self.weight_decay,
            "mean": self.mean,
            "std": self.std,
        }


def train_autoencoder(
    x_train,
    x_val,
    epochs,
    batch_size=128,
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    milestones=(60, 120, 160),
    decay=0.2,
    augment=True,
    crop_padding=4,
    verbose=0,
):
    """Trains an `Autoencoder` to reconstruct images (MSE), as ReffAKD's code.

    As the official notebooks (`cifar100/autoencoder.ipynb`,
    `fashion_mnist/autoencoder.ipynb`): inputs are normalised with the
    training set's per-channel mean and std, and the target is the
    normalised image; training images are augmented (`augment`, see
    `augmentation`: a random crop after `crop_padding` pixels of black
    padding, 4 for CIFAR-100, 0 (no crop) for Fashion-MNIST, then a
    horizontal flip and a rotation within ±15°); SGD with momentum and coupled L2
    `weight_decay` (lr 0.1, momentum 0.9, wd 5e-4, batch 128) divides the
    rate by 5 at epochs 60/120/160 of 200, here scaled to `epochs`
    (`milestones` are given for 200 epochs). The weights of the epoch with
    the lowest held-out MSE are kept.

    Args:
        x_train: training images `(N, H, W, C)` in [0, 1].
        x_val: held-out images for checkpoint selection.
        epochs: training epochs.

    Returns:
        `(autoencoder, cost)`: the autoencoder with its best weights (its
        encoder normalises [0, 1] images itself), and `cost = {"params",
        "train_seconds", "val_mse"}`, the compute to set against training a
        teacher, and the kept epoch's held-out MSE.

    Example:

    ```python
    autoencoder, cost = train_autoencoder(x_train, x_test, epochs=20)
    ```
    """
    x_train = np.asarray(x_train, "float32")
    x_val = np.asarray(x_val, "float32")
    mean = x_train.mean(axis=(0, 1, 2))
    std = x_train.std(axis=(0, 1, 2))
    autoencoder = Autoencoder(x_train.shape[1:], weight_decay, mean, std)
    trainer = reconstruction_trainer(autoencoder, augment, crop_padding)
    schedule = multistep_schedule(
        learning_rate,
        milestones,
        decay,
        epochs,
        steps_per_epoch(len(x_train), batch_size),
    )
    trainer.compile(
        keras.optimizers.SGD(schedule, momentum=momentum),
        loss=reconstruction_mse,
        metrics=[reconstruction_mse],
    )
    best = best_checkpoint(epochs)
    start = time.perf_counter()
    trainer.fit(
        x_train,
        x_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, x_val),
        callbacks=[best],
        verbose=verbose,
    )
    cost = {
        "params": autoencoder.count_params(),
        "train_seconds": time.perf_counter() - start,
        "val_mse": best.best,
    }
    return autoencoder, cost


def augmentation(crop_padding=4, seed=None):
    """ReffAKD's training augmentation of [0, 1] images, as a layer stack.

    A random crop after `crop_padding` pixels of black padding (none when
    0), a horizontal flip and a nearest-neighbour rotation within ±15°
    filled with black: torchvision's `RandomCrop(size, padding)`,
    `RandomHorizontalFlip` and `RandomRotation(15)` of the official
    notebooks (the Fashion-MNIST one has no crop). Active only with
    `training=True`.

    Example:

    ```python
    augmented = augmentation(crop_padding=0, seed=1)(images, training=True)
    ```
    """
    steps = [RandomPaddedCrop(crop_padding, seed=seed)] if crop_padding else []
    # Seeds of their own: one seed would tie each image's flip to its angle
    # (and to its crop).
    later = None if seed is None else seed + 1
    steps.append(flip_rotation(15, fill_value=0.0, seed=later))
    return keras.Sequential(steps, name="reffakd_augmentation")


def reconstruction_trainer(autoencoder, augment=True, crop_padding=4):
    """A model of the autoencoder's training step: `[reconstruction, target]`.

    Maps [0, 1] images (augmented in training by `augmentation` when
    `augment`) to the reconstruction of the normalised image concatenated
    on channels with that normalised image, the target.
    """
    inputs = keras.Input(autoencoder.image_shape)
    x = augmentation(crop_padding)(inputs) if augment else inputs
    target = autoencoder.encoder.get_layer("normalize")(x)
    outputs = layers.Concatenate()([autoencoder(x), target])
    return keras.Model(inputs, outputs, name="reconstruction_trainer")


def autoencoder_size(images):
    """Resizes `(N, H, W, C)` images to the next multiples of 8 (bilinear).

    The autoencoder halves H and W three times. The Fashion-MNIST notebook
    resizes 28×28 to 32×32 (`T.Resize((32, 32))`); sizes that are already
    multiples of 8 are returned unchanged.

    Example:

    ```python
    unit32 = autoencoder_size(x_train / 255.0)  # 28x28 -> 32x32
    ```
    """
    images = np.asarray(images, "float32")
    height, width = images.shape[1:3]
    size = (height + -height % 8, width + -width % 8)
    if size == (height, width):
        return images
    resized = keras.ops.image.resize(images, size, interpolation="bilinear")
    return np.clip(keras.ops.convert_to_numpy(resized), 0.0, 1.0)


def reconstruction_mse(y_true, y_pred):
    """MSE of the reconstruction against the target `reconstruction_trainer`
    outputs; `y_true` is unused."""
    del y_true
    reconstruction, target = keras.ops.split(y_pred, 2, axis=-1)
    return keras.ops.mean(keras.ops.square(reconstruction - target), axis=(1, 2, 3))


def multistep_schedule(learning_rate, milestones, decay, epochs, steps_per_epoch):
    """PyTorch's `MultiStepLR` per epoch, milestones given for 200 epochs.

    Milestone `m` moves to epoch `round(m · epochs / 200)`; from that epoch
    on (0-based) the rate is multiplied by `decay` once more.
    """
    epochs_at = sorted({round(m * epochs / 200) for m in milestones} - {0})
    return step_schedule(learning_rate, epochs_at, decay, steps_per_epoch)


def best_checkpoint(epochs):
    """Keeps and restores the weights of the epoch with the lowest held-out
    reconstruction MSE (the official notebook's best-loss checkpoint)."""
    return keras.callbacks.EarlyStopping(
        "val_reconstruction_mse",
        mode="min",
        patience=epochs,
        restore_best_weights=True,
    )


def class_similarity(
    encoder, x, y, per_class=40, diagonal_boost=0.0225, seed=0, augment=None
):
    """ReffAKD's class-similarity matrix from bottleneck codes.

    Samples `per_class` images of each class (seeded), encodes them (after
    `augment(images, training=True)` when given: the official notebooks
    encode the augmented training loader, e.g. `augmentation(seed=seed)`),
    and
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
    images = np.asarray(x)[picked]
    if augment is not None:
        images = keras.ops.convert_to_numpy(augment(images, training=True))
    codes = encoder.predict(images, verbose=0)
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
    `kd.SoftLabelTeacher(table)`. Warns when a row gives another class at
    least its own label's mass (`label_margins`): distilling from it
    teaches that class wrong.

    Example:

    ```python
    table = soft_label_table(class_similarity(encoder, x_train, y_train))
    ```
    """
    similarity = np.asarray(similarity, "float64")
    margins, rivals = label_margins(similarity)
    if (margins <= 0).any():
        wrong = np.flatnonzero(margins <= 0)
        pairs = ", ".join(f"{c} -> {rivals[c]}" for c in wrong)
        warnings.warn(
            f"ReffAKD soft labels: {len(wrong)} of {len(margins)} classes "
            f"give another class at least their own mass ({pairs}), so "
            f"distilling from the table teaches them wrong (the official "
            f"notebooks count these rows, fashion_mnist/autoencoder.ipynb "
            f"cell 30). Raise the diagonal bonus by more than "
            f"{-margins.min():.4f} (class_similarity(diagonal_boost=...), "
            f"--reffakd_diagonal) or train the autoencoder longer.",
            stacklevel=2,
        )
    exp = np.exp(similarity - similarity.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype("float32")


def label_margins(similarity):
    """`(margins, rivals)`: per class, its own similarity minus the largest
    other one in its row, and that other class.

    The soft-label table ranks the label first in exactly the rows whose
    margin is positive (the softmax keeps the order); on the log of a table,
    the margins are the same as on its similarities.

    Example:

    ```python
    label_margins([[1.0, 0.2], [0.5, 0.4]])  # ([0.8, -0.1], [1, 0])
    ```
    """
    similarity = np.asarray(similarity, "float64")
    others = np.where(np.eye(len(similarity), dtype=bool), -np.inf, similarity)
    return np.diag(similarity) - others.max(axis=1), others.argmax(axis=1)
