import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.base import check_batch_sizes
from keras_kd.losses.base import flat_features
from keras_kd.losses.base import l2_normalize

_FORMULATIONS = ("gaussian", "repdistiller")


def taylor_rbf_correlation(e, gamma=0.4, order=2):
    """CC's `(batch, batch)` correlation matrix: the P-order Taylor expansion
    of the Gaussian RBF kernel on L2-normalised rows.

    For unit vectors `exp(−γ‖x − y‖²) = exp(−2γ) · exp(2γ·xᵀy)`, and the
    second factor is expanded to `Σ_{p=0..P} (2γ)^p / p! · (xᵀy)^p`.
    """
    e = l2_normalize(e, axis=-1)
    similarity = ops.matmul(e, ops.transpose(e))
    correlation = ops.zeros_like(similarity)
    for p in range(order + 1):
        coefficient = math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)
        correlation = correlation + coefficient * similarity**p
    return correlation


def _linear_embedding(dim_in, dim_out, name):
    """`Dense(dim_out)` initialised as PyTorch's `nn.Linear(dim_in, dim_out)`."""
    bound = 1.0 / math.sqrt(dim_in)
    embedding = layers.Dense(
        dim_out,
        kernel_initializer=keras.initializers.VarianceScaling(
            1.0 / 3.0, "fan_in", "uniform"
        ),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        dtype="float32",
        name=name,
    )
    embedding.build((None, dim_in))
    return embedding


@keras.saving.register_keras_serializable(package="keras_kd")
class CorrelationCongruence(DistillationTerm):
    """CC (Peng et al., ICCV 2019): match the correlations between samples.

    Features are flattened per sample and, with `embedding_dim`, mapped by
    trainable linear heads (one for the student and one for the teacher,
    per teacher, as RepDistiller's `LinearEmbed`; they train with the
    student and are not part of either model). Two formulations:

    - `"gaussian"` (the paper): `mean_{i,j} (C^s_ij − C^t_ij)²` with `C` the
      P-order Taylor expansion of the Gaussian RBF kernel on L2-normalised
      embeddings (`taylor_rbf_correlation`, γ = 0.4, P = 2).
    - `"repdistiller"` (the code the authors shared, run by RepDistiller's
      CIFAR-100 benchmark): with `δ_i = |e^s_i − e^t_i|`,
      `mean_i Σ_d δ_{i,d} · δ_{i+1,d}` over consecutive samples of the
      batch; the two embeddings must have the same size.

    A batch-level term: it returns a scalar (`sample_weight` does not apply
    to it). With several teachers the loss is `Σ_m w_m · L(teacher m)`.

    Args:
        teacher_layer_name, student_layer_name: the features compared
            (official: the pooled penultimate feature).
        formulation: `"gaussian"` or `"repdistiller"`.
        embedding_dim: the size of the linear heads, or None for none
            (RepDistiller: 128).
        gamma, order: the Gaussian RBF's γ and the Taylor order P.

    Example:

    ```python
    cc = kd.losses.CorrelationCongruence("features", "features",
                                         embedding_dim=128)
    distiller = kd.Distiller(teacher, student, cc, weighting="additive",
                             student_loss_weight=1.0)
    ```
    """

    def __init__(
        self,
        teacher_layer_name="features",
        student_layer_name="features",
        formulation="gaussian",
        embedding_dim=None,
        gamma=0.4,
        order=2,
        **kwargs,
    ):
        super().__init__([teacher_layer_name], [student_layer_name], **kwargs)
        if formulation not in _FORMULATIONS:
            raise ValueError(
                f"formulation must be one of {_FORMULATIONS}, got {formulation!r}."
            )
        if embedding_dim is not None and int(embedding_dim) < 1:
            raise ValueError(
                f"embedding_dim must be a positive integer or None, got "
                f"{embedding_dim!r}."
            )
        if gamma <= 0 or int(order) != order or order < 0:
            raise ValueError(
                f"gamma must be positive and order a non-negative integer, "
                f"got gamma={gamma!r}, order={order!r}."
            )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.formulation = formulation
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.gamma = float(gamma)
        self.order = int(order)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        check_batch_sizes(self, teacher_outputs_shape, student_outputs_shape)
        size = lambda shape: int(np.prod(shape[1:]))
        s_dim = size(student_outputs_shape[self.student_layer_name])
        t_dims = [
            size(shapes[self.teacher_layer_name]) for shapes in teacher_outputs_shape
        ]
        if self.embedding_dim is None:
            if self.formulation == "repdistiller" and set(t_dims) != {s_dim}:
                raise ValueError(
                    f"CorrelationCongruence(formulation='repdistiller') "
                    f"subtracts teacher and student features, but teacher "
                    f"'{self.teacher_layer_name}' has {t_dims} features and "
                    f"student '{self.student_layer_name}' {s_dim}. Set "
                    f"embedding_dim (RepDistiller: 128) to map both to one "
                    f"size."
                )
            self.student_embeddings = self.teacher_embeddings = None
            return
        self.student_embeddings = [
            _linear_embedding(s_dim, self.embedding_dim, f"student_embed_{i}")
            for i in range(len(t_dims))
        ]
        self.teacher_embeddings = [
            _linear_embedding(t_dim, self.embedding_dim, f"teacher_embed_{i}")
            for i, t_dim in enumerate(t_dims)
        ]

    def call(self, teacher_outputs, student_outputs, labels=None, teacher_weights=None):
        f_s = flat_features(student_outputs, self.student_layer_name)
        total = 0.0
        for i, (w, out) in enumerate(zip(teacher_weights, teacher_outputs)):
            e_t = flat_features(out, self.teacher_layer_name)
            e_s = f_s
            if self.embedding_dim is not None:
                e_s = self.student_embeddings[i](e_s)
                e_t = self.teacher_embeddings[i](e_t)
            total = total + w * self._congruence(e_t, e_s)
        return total

    def _congruence(self, e_t, e_s):
        if self.formulation == "repdistiller":
            delta = ops.abs(e_s - e_t)
            return ops.mean(ops.sum(delta[:-1] * delta[1:], axis=1))
        c_t = taylor_rbf_correlation(e_t, self.gamma, self.order)
        c_s = taylor_rbf_correlation(e_s, self.gamma, self.order)
        return ops.mean(ops.square(c_s - c_t))

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "formulation": self.formulation,
            "embedding_dim": self.embedding_dim,
            "gamma": self.gamma,
            "order": self.order,
        }
