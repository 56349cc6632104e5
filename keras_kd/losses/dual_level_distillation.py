import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.data import RandomPaddedCrop
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import class_indices

_NUM_ROTATIONS = 4


def _batch_norm():
    # PyTorch's BatchNorm1d defaults, as in the official code.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float32")


def _mlp(hidden, output, name):
    """`Dense → BN → ReLU → Dense`, the official code's MLP head."""
    return keras.Sequential(
        [
            layers.Dense(hidden, dtype="float32"),
            _batch_norm(),
            layers.ReLU(dtype="float32"),
            layers.Dense(output, dtype="float32"),
        ],
        name=name,
    )


def l2_normalize(x, epsilon=1e-12):
    """`x / max(‖x‖₂, ε)` along the last axis (PyTorch's `F.normalize`)."""
    # sqrt(max(Σx², ε²)) = max(‖x‖, ε), with a finite gradient at x = 0.
    squares = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x / ops.sqrt(ops.maximum(squares, epsilon**2))


def rotate_views(images):
    """`[x, rot90(x), rot180(x), rot270(x)]` of an NHWC batch, on axis 0."""
    shape = images.shape
    if len(shape) != 4:
        raise ValueError(
            f"DualLevelDistillation rotates image batches (batch, H, W, C); "
            f"got inputs of shape {tuple(shape)}."
        )
    height, width = shape[1], shape[2]
    if height is not None and width is not None and height != width:
        raise ValueError(
            f"DualLevelDistillation rotates every image by 90°, 180° and "
            f"270°, which needs square images, but the inputs are "
            f"{height}×{width}. Crop or resize them to a square (e.g. "
            f"keras.layers.Resizing({max(height, width)}, "
            f"{max(height, width)}) before the models)."
        )
    return ops.concatenate(
        [images] + [ops.rot90(images, k, axes=(1, 2)) for k in (1, 2, 3)],
        axis=0,
    )


def correlation_divergence(student_vectors, teacher_vectors, temperature):
    """`mean_a KL(softmax(S^t[a]/τ) ‖ softmax(S^s[a]/τ))`, a scalar.

    Rows `a` are the rotated views (all but the first quarter of the batch),
    columns `o` the unrotated views (the first quarter); `S[a, o]` is the
    cosine similarity of the two views' vectors.
    """
    batch = ops.shape(student_vectors)[0] // _NUM_ROTATIONS

    def similarities(vectors):
        vectors = l2_normalize(vectors)
        return ops.matmul(vectors[batch:], ops.transpose(vectors[:batch]))

    log_student = ops.log_softmax(similarities(student_vectors) / temperature, axis=-1)
    log_teacher = ops.log_softmax(similarities(teacher_vectors) / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
    return ops.mean(kl)


def supervised_contrastive(embeddings, labels, temperature):
    """SupCon (Khosla et al.) over `embeddings` with `labels`, a scalar.

    Every embedding is an anchor; its positives are all others with the
    same label; `−mean_anchors mean_positives log softmax_{≠anchor}(e·e'/τ)`.
    """
    count = ops.shape(embeddings)[0]
    logits = ops.matmul(embeddings, ops.transpose(embeddings)) / temperature
    others = ops.logical_not(ops.eye(count, dtype="bool"))
    log_prob = logits - ops.logsumexp(
        ops.where(others, logits, -1e9), axis=-1, keepdims=True
    )
    positives = ops.cast(
        ops.logical_and(ops.equal(labels[:, None], labels[None, :]), others),
        "float32",
    )
    mean_log_prob = ops.sum(positives * log_prob, axis=-1) / ops.maximum(
        ops.sum(positives, axis=-1), 1.0
    )
    return -ops.mean(mean_log_prob)


@keras.saving.register_keras_serializable(package="keras_kd")
class DualLevelDistillation(DistillationTerm):
    """DLKD: dual-level KD, knowledge alignment and correlation (§3).

    Ding et al., IEEE TNNLS 2024, as in the official code (ifding/DLKD).
    Each training image becomes 4 views rotated by 0°, 90°, 180°, 270°
    (made inside the training step by `transform_inputs`); teacher and
    student
    both run on all `N = 4B` views and the Distiller's supervised loss sees
    the unrotated views only. On the pooled features `f_s`, `f_t` of all
    views, with `O` the unrotated and `A` the rotated views:

    - correlation: `S^s[a,o] = cos(h_corr(f_s)_a, h_corr(f_s)_o)`,
      `S^t[a,o] = cos(f_t,a, f_t,o)`,
      `L_corr = mean_a KL(softmax(S^t[a]/0.5) ‖ softmax(S^s[a]/0.5))`;
    - contrastive: supervised contrastive loss over the `2N` anchors
      `e_s(f_s) ∪ e_t(f_t)` (Dense(128) + L2-normalise each, the teacher's
      head trains while its backbone is frozen), positives = same label,
      logits = dot products / 0.07;
    - alignment: `L_align = mean_n [2 − 2·cos(h_align(f_s,n), f_t,n)]`,
      `h_align` an MLP `d_s → 16·d_t → d_t`.

    The heads (`h_corr`: `d_s → d_s → d_s`, MLPs are Dense–BN–ReLU–Dense)
    train with the student and are not part of it. `call` returns the
    weighted parts `{"correlation": 50·L_corr, "contrastive": 1·L_sup,
    "alignment": 20·L_align}` (the CIFAR-100 weights; ImageNet: 20, 0.5,
    10), reported as the metrics `dual_level_distillation_<part>`. They are
    batch-level, so `sample_weight` does not apply to them. Use it with
    `weighting="additive"`, `student_loss_weight=1.0` and a term weight of
    1.0 for the paper's `1·CE + 50·L_corr + 1·L_sup + 20·L_align`. The
    inputs must be square images; one teacher.

    Args:
        teacher_layer_name: the teacher's pooled penultimate features (a
            feature map is global-average-pooled).
        student_layer_name: the student's.
        correlation_weight, contrastive_weight, alignment_weight: the
            parts' weights.
        embedding_dim: size of the contrastive embeddings (128).
        correlation_temperature: `0.5`.
        contrastive_temperature: `0.07`.
        crop_padding: with a positive value, `transform_inputs` augments
            in training as the official data pipeline (ifding/DLKD
            `dataset/cifar.py`): one horizontal flip per image (probability
            1/2) shared by its four views, then an independent random crop
            of every rotated view after `crop_padding` pixels of padding.
            Give the models no other augmentation then. 0: no augmentation.
        pad_value: the padding, the value of a black pixel in the models'
            input units (a scalar or one per channel): `−mean / std` for
            normalised images, so padding is black as torchvision pads
            before normalising.

    Example:

    ```python
    mean, std = kd.data.channel_stats(x)  # x: uint8 images.
    dlkd = kd.losses.DualLevelDistillation(
        "features", "features", crop_padding=4, pad_value=-mean / std)
    distiller = kd.Distiller(
        teacher, student, dlkd, student_loss_weight=1.0,
        weighting="additive")
    distiller.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    distiller.fit(x, y, batch_size=64)  # The student sees 256 views a step.
    ```
    """

    num_views = _NUM_ROTATIONS
    component_names = ("correlation", "contrastive", "alignment")

    def __init__(
        self,
        teacher_layer_name,
        student_layer_name,
        correlation_weight=50.0,
        contrastive_weight=1.0,
        alignment_weight=20.0,
        embedding_dim=128,
        correlation_temperature=0.5,
        contrastive_temperature=0.07,
        crop_padding=0,
        pad_value=0.0,
        seed=None,
        **kwargs,
    ):
        for name, value in [
            ("teacher_layer_name", teacher_layer_name),
            ("student_layer_name", student_layer_name),
        ]:
            if not isinstance(value, str):
                raise ValueError(
                    f"{name} must be one layer name (the pooled penultimate "
                    f"features), got {value!r}."
                )
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        for name, value in [
            ("correlation_weight", correlation_weight),
            ("contrastive_weight", contrastive_weight),
            ("alignment_weight", alignment_weight),
        ]:
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}.")
        for name, value in [
            ("correlation_temperature", correlation_temperature),
            ("contrastive_temperature", contrastive_temperature),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if int(embedding_dim) != embedding_dim or embedding_dim < 1:
            raise ValueError(
                f"embedding_dim must be a positive integer, got {embedding_dim}."
            )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.correlation_weight = float(correlation_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.alignment_weight = float(alignment_weight)
        self.embedding_dim = int(embedding_dim)
        self.correlation_temperature = float(correlation_temperature)
        self.contrastive_temperature = float(contrastive_temperature)
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(
                f"crop_padding must be a non-negative integer (pixels), got "
                f"{crop_padding}."
            )
        self.crop_padding = int(crop_padding)
        self.pad_value = (
            float(pad_value)
            if np.ndim(pad_value) == 0
            else [float(v) for v in pad_value]
        )
        self.seed = seed
        if self.crop_padding:
            self.flip = layers.RandomFlip("horizontal", seed=seed)
            self.crop = RandomPaddedCrop(self.crop_padding, self.pad_value, seed=seed)

    def transform_inputs(self, x, training=True):
        if not (self.crop_padding and training):
            return rotate_views(x)
        # Flip before rotating, so an image's four views share the flip;
        # then crop every view on its own.
        x = self.flip(x, training=True)
        return self.crop(rotate_views(x), training=True)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(teacher_outputs_shape) != 1:
            raise ValueError(
                f"DualLevelDistillation distils from one teacher, got "
                f"{len(teacher_outputs_shape)}."
            )
        shapes = {
            "student": tuple(student_outputs_shape[self.student_layer_name]),
            "teacher": tuple(teacher_outputs_shape[0][self.teacher_layer_name]),
        }
        for role, shape in shapes.items():
            if len(shape) not in (2, 4) or shape[-1] is None:
                raise ValueError(
                    f"DualLevelDistillation reads pooled features (batch, C) "
                    f"or feature maps (batch, H, W, C); the {role} layer "
                    f"gives shape {shape}."
                )
        d_s, d_t = shapes["student"][-1], shapes["teacher"][-1]
        self.correlation_head = _mlp(d_s, d_s, "correlation_head")
        self.alignment_head = _mlp(16 * d_t, d_t, "alignment_head")
        self.student_embedding = layers.Dense(
            self.embedding_dim, dtype="float32", name="student_embedding"
        )
        self.teacher_embedding = layers.Dense(
            self.embedding_dim, dtype="float32", name="teacher_embedding"
        )
        for head, dim in [
            (self.correlation_head, d_s),
            (self.alignment_head, d_s),
            (self.student_embedding, d_s),
            (self.teacher_embedding, d_t),
        ]:
            head.build((None, dim))
        self.built = True

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
    ):
        if labels is None:
            raise ValueError(
                "DualLevelDistillation's contrastive part needs the labels."
            )
        f_s = _pooled(student_outputs[self.student_layer_name])
        f_t = _pooled(teacher_outputs[0][self.teacher_layer_name])

        correlation = correlation_divergence(
            self.correlation_head(f_s, training=training),
            f_t,
            self.correlation_temperature,
        )

        logits = student_outputs.get("logits")
        shape = None if logits is None else logits.shape
        labels = class_indices(labels, shape, "DualLevelDistillation")
        view_labels = ops.tile(labels, [self.num_views])
        embeddings = ops.concatenate(
            [
                l2_normalize(self.student_embedding(f_s)),
                l2_normalize(self.teacher_embedding(f_t)),
            ],
            axis=0,
        )
        contrastive = supervised_contrastive(
            embeddings,
            ops.tile(view_labels, [2]),
            self.contrastive_temperature,
        )

        aligned = l2_normalize(self.alignment_head(f_s, training=training))
        cosine = ops.sum(aligned * l2_normalize(f_t), axis=-1)
        alignment = ops.mean(2.0 - 2.0 * cosine)

        return {
            "correlation": self.correlation_weight * correlation,
            "contrastive": self.contrastive_weight * contrastive,
            "alignment": self.alignment_weight * alignment,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "correlation_weight": self.correlation_weight,
            "contrastive_weight": self.contrastive_weight,
            "alignment_weight": self.alignment_weight,
            "embedding_dim": self.embedding_dim,
            "correlation_temperature": self.correlation_temperature,
            "contrastive_temperature": self.contrastive_temperature,
            "crop_padding": self.crop_padding,
            "pad_value": self.pad_value,
            "seed": self.seed,
        }


def _pooled(feature):
    feature = ops.cast(feature, "float32")
    if len(feature.shape) == 4:
        return ops.mean(feature, axis=(1, 2))
    return feature
