import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.losses import crd_negatives
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import class_indices

#: The `eps` of the official ContrastLoss (RepDistiller crd/criterion.py).
_EPS = 1e-7


def _torch_linear(units, fan_in, seed, name):
    """A built `Dense` layer initialised like PyTorch's `nn.Linear`."""
    bound = 1.0 / math.sqrt(fan_in)
    dense = layers.Dense(
        units,
        kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound, seed),
        dtype="float32",
        name=name,
    )
    dense.build((None, fan_in))
    return dense


def _offset(seed, k):
    return None if seed is None else seed + k


def l2_normalize(x):
    """`x / ‖x‖₂` over the last axis (the official `Normalize(2)`)."""
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-24))


@keras.saving.register_keras_serializable(package="keras_kd")
class ContrastiveRepresentation(DistillationTerm):
    """CRD: contrastive representation distillation (Tian et al., ICLR 2020).

    Student and teacher features (`"features"`, the pooled vector, as in
    RepDistiller) are embedded by a trainable linear head each and L2
    normalised (`feat_dim` 128). Two memory banks hold one embedding per
    training image: `memory_student` and `memory_teacher`
    (`num_data × feat_dim`, non-trainable, owned by the term). For each
    image `i` with `K` negatives `j`, the scores against the *other* model's
    bank are `P = exp(v · m_j / T) / Z` (`Z` is set once, on the first
    training batch, to `mean(exp(·/T)) · num_data`, as official), and the NCE
    loss is `−log(P_i / (P_i + K/N + ε)) − Σ_j log((K/N) / (P_j + K/N + ε))`
    for the student's embedding against the teacher bank plus the teacher's
    against the student bank. After the loss, the rows of the batch are
    updated: `m_i ← normalise(momentum · m_i + (1 − momentum) · v_i)`.

    The batch must carry its images' dataset positions, so `fit` takes
    `x = kd.data.with_example_index(images)`. Negatives
    (`kd.losses.crd_negatives`) are drawn in-graph from `seed`:

    - `"exact"` (default; RepDistiller's default mode): `K` images of other
      classes, without replacement (with replacement when the class leaves
      fewer than `K`, or with `replacement=True`). The term keeps one label
      per image (the non-trainable `labels` weight): `labels` given here, or
      written from each training batch's `y` (until an image is seen, it
      counts as another class);
    - `"uniform"`: the other `num_data − 1` images, with replacement
      (RepDistiller's memory without sampled indices);
    - `"given"`: read from the batch entry `"contrast_index"`
      (`(batch, K + 1)`, the positive first).

    Memory: the banks take `2 · num_data · feat_dim · 4` bytes, 51.2 MB for
    CIFAR (50 000 images) and 1.02 GB for 1 M images; each step also
    gathers `2 · batch · (K + 1) · feat_dim` floats (537 MB per bank at
    batch 64, K 16 384, as in the official code).

    Example:

    ```python
    crd = kd.losses.ContrastiveRepresentation(num_data=len(x_train))
    distiller = kd.Distiller(teacher, student, [crd],
                             distillation_loss_weights=[0.8],
                             student_loss_weight=1.0, weighting="additive")
    distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    distiller.fit(kd.data.with_example_index(x_train), y_train)
    ```
    """

    def __init__(
        self,
        num_data,
        teacher_layer_name="features",
        student_layer_name="features",
        feat_dim=128,
        num_negatives=16384,
        temperature=0.07,
        momentum=0.5,
        negatives="exact",
        labels=None,
        replacement=None,
        seed=None,
        **kwargs,
    ):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if not isinstance(num_data, int) or num_data < 2:
            raise ValueError(
                f"num_data must be the number of training images (an int "
                f">= 2), got {num_data!r}."
            )
        # "sample": the uniform mode's former name, in saved configs.
        negatives = {"sample": "uniform"}.get(negatives, negatives)
        if negatives not in ("exact", "uniform", "given"):
            raise ValueError(
                f"negatives must be 'exact', 'uniform' or 'given', got {negatives!r}."
            )
        if labels is not None and (negatives != "exact" or len(labels) != num_data):
            raise ValueError(
                f"labels are the num_data={num_data} training labels of "
                f"negatives='exact'; got {len(labels)} with {negatives=}."
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.num_data = num_data
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.feat_dim = feat_dim
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.negatives = negatives
        self.labels = None if labels is None else np.asarray(labels, "int32")
        self.replacement = replacement
        self.seed = seed
        self.side_inputs = ("example_index",) + (
            ("contrast_index",) if negatives == "given" else ()
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        if len(teacher_outputs_shape) != 1:
            raise ValueError(
                f"ContrastiveRepresentation distils one teacher, got "
                f"{len(teacher_outputs_shape)}; use one term per teacher."
            )
        shapes = {
            "student": student_outputs_shape[self.student_layer_name],
            "teacher": teacher_outputs_shape[0][self.teacher_layer_name],
        }
        self.embed_student, self.embed_teacher = (
            _torch_linear(
                self.feat_dim,
                math.prod(shapes[role][1:]),
                _offset(self.seed, k),
                f"embed_{role}",
            )
            for k, role in enumerate(("student", "teacher"))
        )
        # Official init: uniform in ±1/sqrt(feat_dim / 3), not normalised.
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
        self.memory_student, self.memory_teacher = (
            self.add_weight(
                (self.num_data, self.feat_dim),
                keras.initializers.RandomUniform(-stdv, stdv, _offset(self.seed, k)),
                trainable=False,
                name=f"memory_{role}",
            )
            for k, role in ((2, "student"), (3, "teacher"))
        )
        if self.negatives == "exact":  # One label per image; -1 until seen.
            self.label_bank = self.add_weight(
                (self.num_data,),
                keras.initializers.Constant(-1),
                trainable=False,
                dtype="int32",
                name="labels",
            )
            if self.labels is not None:
                self.label_bank.assign(self.labels)
        # Z of the student's and the teacher's scores; -1 until set.
        self.normalizers = self.add_weight(
            (2,),
            keras.initializers.Constant(-1.0),
            trainable=False,
            name="normalizers",
        )

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
        side_inputs=None,
    ):
        if side_inputs is None or "example_index" not in side_inputs:
            raise ValueError(
                "ContrastiveRepresentation needs each batch's example "
                "indices: fit(kd.data.with_example_index(x), y)."
            )
        index = ops.reshape(ops.cast(side_inputs["example_index"], "int32"), (-1,))
        v_s = self._embed("student", student_outputs[self.student_layer_name])
        v_t = self._embed("teacher", teacher_outputs[0][self.teacher_layer_name])
        contrast = self._contrast_index(index, side_inputs, labels, training)
        memory_s = ops.convert_to_tensor(self.memory_student)
        memory_t = ops.convert_to_tensor(self.memory_teacher)
        # The student's embedding against the teacher bank and vice versa.
        scores_s = self._scores(memory_t, contrast, v_s)
        scores_t = self._scores(memory_s, contrast, v_t)
        normalizers = ops.convert_to_tensor(self.normalizers)
        z = ops.where(
            normalizers < 0,
            ops.stack([ops.mean(scores_s), ops.mean(scores_t)]) * self.num_data,
            normalizers,
        )
        z = ops.stop_gradient(z)
        loss = self._nce(scores_s / z[0]) + self._nce(scores_t / z[1])
        if training:
            self.normalizers.assign(z)
            self._update(self.memory_student, memory_s, index, v_s)
            self._update(self.memory_teacher, memory_t, index, v_t)
        return loss

    def _embed(self, role, feature):
        feature = ops.cast(feature, "float32")
        feature = ops.reshape(feature, (ops.shape(feature)[0], -1))
        embed = self.embed_student if role == "student" else self.embed_teacher
        return l2_normalize(embed(feature))

    def _contrast_index(self, index, side_inputs, labels=None, training=None):
        """`(batch, K + 1)` bank rows: the positive, then `K` negatives."""
        if self.negatives == "given":
            return ops.cast(side_inputs["contrast_index"], "int32")
        k, seed = self.num_negatives, self.seed_generator
        if self.negatives == "uniform":
            draws = crd_negatives.uniform(index, self.num_data, k, seed)
            return ops.concatenate([index[:, None], draws], axis=1)
        if labels is None:
            raise ValueError(
                "ContrastiveRepresentation(negatives='exact') draws negatives "
                "from other classes: fit it with labels y."
            )
        anchor = class_indices(labels)
        bank = ops.convert_to_tensor(self.label_bank)
        bank = ops.scatter_update(bank, index[:, None], anchor)
        if training:
            self.label_bank.assign(bank)
        draws = crd_negatives.other_class(bank, anchor, k, seed, self.replacement)
        return ops.concatenate([index[:, None], draws], axis=1)

    def _scores(self, memory, contrast, v):
        rows = ops.take(memory, contrast, axis=0)  # (batch, K + 1, dim)
        rows = ops.stop_gradient(rows)
        return ops.exp(ops.einsum("bkd,bd->bk", rows, v) / self.temperature)

    def _nce(self, p):
        """The official ContrastLoss per sample; column 0 is the positive."""
        noise = self.num_negatives / self.num_data
        positive = ops.log(p[:, 0] / (p[:, 0] + noise + _EPS))
        negative = ops.sum(ops.log(noise / (p[:, 1:] + noise + _EPS)), axis=-1)
        return -(positive + negative)

    def _update(self, variable, memory, index, v):
        old = ops.take(memory, index, axis=0)
        new = l2_normalize(
            self.momentum * old + (1.0 - self.momentum) * ops.stop_gradient(v)
        )
        variable.assign(ops.scatter_update(memory, index[:, None], new))

    def get_config(self):
        return {
            **super().get_config(),
            "num_data": self.num_data,
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "feat_dim": self.feat_dim,
            "num_negatives": self.num_negatives,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "negatives": self.negatives,
            "replacement": self.replacement,
            "seed": self.seed,
        }
