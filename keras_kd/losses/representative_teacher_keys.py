import keras
from keras import ops

from keras_kd.losses.attention_feature_distillation import AttentionFeatureDistillation


@keras.saving.register_keras_serializable(package="keras_kd")
class RepresentativeTeacherKeys(AttentionFeatureDistillation):
    """RTK (Yang, Kao & Huang, arXiv 2206.12788): AFD over top-k keys.

    AFD (`kd.losses.AttentionFeatureDistillation`) where each query attends
    only to its `num_keys` highest-scoring keys: the other logits are
    dropped (−∞) before the softmax, so every row of attention weights sums
    to 1 over the representative keys (docs/methods.md §4, our reading of the
    abstract).

    - `query_side="student"` (default): each student feature queries the
      teacher features, which are the keys; the meta-network is AFD's with
      the roles swapped (a query per student feature, teacher keys reshaped
      into one key per student feature), and the loss per sample is
      `Σ_s Σ_t α_{s,t} · mean_pixels((v_s − v_t)²)`, each pair compared at
      the smaller map's size (the larger map is adaptive-average-pooled).
    - `query_side="teacher"`: AFD's direction (teacher queries, student
      keys, student maps pooled to the teacher's size) with top-k over the
      student keys.

    Args:
        teacher_layer_names: candidate teacher feature maps.
        student_layer_names: candidate student feature maps.
        qk_dim: query/key size `d`.
        num_keys: keys kept per query, at most the number of key features.
        query_side: `"student"` or `"teacher"`.

    Example:

    ```python
    rtk = kd.losses.RepresentativeTeacherKeys(
        kd.models.block_layer_names(teacher),
        kd.models.block_layer_names(student), num_keys=2)
    distiller = kd.Distiller(
        teacher, student, [kd.losses.LogitsDistillation(4.0), rtk],
        distillation_loss_weights=[0.9, 200.0], weighting="additive",
        student_loss_weight=1.0)
    ```
    """

    def __init__(
        self,
        teacher_layer_names,
        student_layer_names,
        qk_dim=128,
        num_keys=2,
        query_side="student",
        **kwargs,
    ):
        super().__init__(teacher_layer_names, student_layer_names, qk_dim, **kwargs)
        if query_side not in ("student", "teacher"):
            raise ValueError(
                f"query_side must be 'student' or 'teacher', got {query_side!r}."
            )
        self.query_side = query_side
        _, keys = self._sides(self.teacher_layer_names, self.student_layer_names)
        key_side = "teacher" if query_side == "student" else "student"
        if int(num_keys) != num_keys or not 1 <= num_keys <= len(keys):
            raise ValueError(
                f"num_keys must be an integer from 1 to the number of "
                f"{key_side} features that serve as keys ({len(keys)}: "
                f"{keys}) with query_side={query_side!r}; got {num_keys}."
            )
        self.num_keys = int(num_keys)

    def attention(self, logits):
        """Softmax over each query's `num_keys` largest logits; 0 elsewhere."""
        _, indices = ops.top_k(logits, self.num_keys)
        keep = ops.sum(
            ops.one_hot(indices, ops.shape(logits)[-1], dtype="float32"),
            axis=-2,
        )
        # The row maximum is always kept, so exp(·) ≤ 1 and the sum ≥ 1.
        weights = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
        weights = weights * keep
        return weights / ops.sum(weights, axis=-1, keepdims=True)

    def pair_size(self, query_size, key_size):
        if self.query_side == "teacher":
            return super().pair_size(query_size, key_size)
        return tuple(map(min, query_size, key_size))

    def get_config(self):
        return {
            **super().get_config(),
            "num_keys": self.num_keys,
            "query_side": self.query_side,
        }
