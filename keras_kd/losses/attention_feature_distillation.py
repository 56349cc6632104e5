import math

import keras
from keras import layers
from keras import ops

from keras_kd.losses.attention_transfer import spatial_attention
from keras_kd.losses.base import DistillationTerm
from keras_kd.losses.layer_pairs import feature_map_shape
from keras_kd.losses.layer_pairs import layer_names


def _batch_norm():
    # PyTorch's BatchNorm1d defaults, as in the official code.
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float32")


class _MetaNetwork(keras.layers.Layer):
    """AFD's attention meta-network between query and key feature lists.

    Query `q_i = BN(Dense(GAP(F_i)))` per query feature; key
    `k_j = ReLU(BN(Dense(GAP(F_j))))` per key feature, then a shared
    `Dense+BN: d → d·n_queries` gives a key `k_{j,i}` per query; learnable
    positional embeddings `p_q`, `p_k` (Xavier normal). Returns the logits
    `(q_i·k_{j,i} + p_q,i·p_k,j) / √d` of shape `(batch, n_queries, n_keys)`.
    """

    def __init__(self, qk_dim, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.qk_dim = qk_dim

    def build(self, query_channels, key_channels):
        d, n_queries = self.qk_dim, len(query_channels)
        self.query_layers = []
        for channels in query_channels:
            stack = keras.Sequential([layers.Dense(d, dtype="float32"), _batch_norm()])
            stack.build((None, channels))
            self.query_layers.append(stack)
        self.key_layers = []
        for channels in key_channels:
            stack = keras.Sequential(
                [
                    layers.Dense(d, dtype="float32"),
                    _batch_norm(),
                    layers.ReLU(dtype="float32"),
                ]
            )
            stack.build((None, channels))
            self.key_layers.append(stack)
        self.bilinear = keras.Sequential(
            [layers.Dense(d * n_queries, dtype="float32"), _batch_norm()]
        )
        self.bilinear.build((None, d))
        self.query_position = self.add_weight(
            shape=(n_queries, d),
            initializer="glorot_normal",
            name="query_position",
        )
        self.key_position = self.add_weight(
            shape=(len(key_channels), d),
            initializer="glorot_normal",
            name="key_position",
        )

    def call(self, query_vectors, key_vectors, training=None):
        queries = ops.stack(
            [f(v, training=training) for f, v in zip(self.query_layers, query_vectors)],
            axis=1,
        )
        keys = ops.stack(
            [f(v, training=training) for f, v in zip(self.key_layers, key_vectors)],
            axis=1,
        )
        batch, n_keys = ops.shape(keys)[0], len(self.key_layers)
        keys = self.bilinear(ops.reshape(keys, (-1, self.qk_dim)), training=training)
        keys = ops.reshape(keys, (batch, n_keys, len(self.query_layers), self.qk_dim))
        logits = ops.einsum("bkqd,bqd->bqk", keys, queries)
        logits = logits + ops.matmul(
            self.query_position, ops.transpose(self.key_position)
        )
        return logits / math.sqrt(self.qk_dim)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionFeatureDistillation(DistillationTerm):
    """AFD, "Show, Attend and Distill" (Ji et al., AAAI 2021), docs/methods.md §4.

    Every teacher feature `t` attends over every student feature `s`
    through a trainable meta-network (see `_MetaNetwork`, `qk_dim = d`):
    `α_{t,s} = softmax_s((q_t·k_{s,t} + p_t·p_s)/√d)`. Values are spatial
    attention maps `v = L2-normalise(flatten(mean_c(F²)))`, the student's
    energy map `mean_c(F²)` adaptive-average-pooled to the teacher map's
    H×W (`spatial_attention(..., pool="energy")`, as AFD's official
    `Sample` module).
    Per sample, `L = Σ_t Σ_s α_{t,s} · mean_pixels((v_{s→t} − v_t)²)`; the
    Distiller's batch mean gives the paper's `Σ_t mean_batch[...]`. With
    several teachers, one meta-network per teacher and `Σ_m w_m · L_m`.
    The meta-networks train with the student and are not part of it.

    Args:
        teacher_layer_names: candidate teacher feature maps (e.g. every
            residual-block output, `kd.models.block_layer_names`).
        student_layer_names: candidate student feature maps.
        qk_dim: query/key size `d` (128 in the paper).

    Example:

    ```python
    afd = kd.losses.AttentionFeatureDistillation(
        kd.models.block_layer_names(teacher),
        kd.models.block_layer_names(student))
    distiller = kd.Distiller(
        teacher, student, [kd.losses.LogitsDistillation(4.0), afd],
        distillation_loss_weights=[0.9, 200.0], weighting="additive",
        student_loss_weight=1.0)
    ```
    """

    def __init__(self, teacher_layer_names, student_layer_names, qk_dim=128, **kwargs):
        teacher_layer_names = layer_names(teacher_layer_names)
        student_layer_names = layer_names(student_layer_names)
        if not teacher_layer_names or not student_layer_names:
            raise ValueError(
                f"{type(self).__name__} needs at least one teacher and one "
                f"student layer; got {teacher_layer_names} and "
                f"{student_layer_names}."
            )
        if int(qk_dim) != qk_dim or qk_dim < 1:
            raise ValueError(f"qk_dim must be a positive integer, got {qk_dim}.")
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)
        self.qk_dim = int(qk_dim)
        #: Which side's features query; the other side's are the keys.
        self.query_side = "teacher"

    def attention(self, logits):
        """Attention weights over the keys (last axis) from the logits."""
        return ops.softmax(logits, axis=-1)

    def pair_size(self, query_size, key_size):
        """The H×W at which a query map and a key map are compared."""
        return query_size

    def build(self, teacher_outputs_shape, student_outputs_shape):
        student_shapes = [
            tuple(student_outputs_shape[name]) for name in self.student_layer_names
        ]
        for name in self.student_layer_names:
            feature_map_shape(self, student_outputs_shape, name, "student")
        self.meta_networks = []
        self.pair_sizes = []
        for i, shapes in enumerate(teacher_outputs_shape):
            for name in self.teacher_layer_names:
                feature_map_shape(self, shapes, name, "teacher")
            teacher_shapes = [tuple(shapes[n]) for n in self.teacher_layer_names]
            queries, keys = self._sides(teacher_shapes, student_shapes)
            network = _MetaNetwork(self.qk_dim, name=f"meta_network_{i}")
            network.build([q[-1] for q in queries], [k[-1] for k in keys])
            self.meta_networks.append(network)
            self.pair_sizes.append(
                [[self.pair_size(q[1:3], k[1:3]) for k in keys] for q in queries]
            )

    def call(
        self,
        teacher_outputs,
        student_outputs,
        labels=None,
        teacher_weights=None,
        training=None,
    ):
        student_maps = [student_outputs[n] for n in self.student_layer_names]
        total = 0.0
        for w, out, network, sizes in zip(
            teacher_weights,
            teacher_outputs,
            self.meta_networks,
            self.pair_sizes,
        ):
            teacher_maps = [out[n] for n in self.teacher_layer_names]
            queries, keys = self._sides(teacher_maps, student_maps)
            logits = network(
                [_global_average(f) for f in queries],
                [_global_average(f) for f in keys],
                training=training,
            )
            distances = _distances(queries, keys, sizes)
            total = total + w * ops.sum(self.attention(logits) * distances, axis=(1, 2))
        return total

    def _sides(self, teacher_items, student_items):
        """`(queries, keys)` for this term's query side."""
        if self.query_side == "teacher":
            return teacher_items, student_items
        return student_items, teacher_items

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_names": self.teacher_layer_names,
            "student_layer_names": self.student_layer_names,
            "qk_dim": self.qk_dim,
        }


def _distances(queries, keys, sizes):
    """`mean_pixels((v_key − v_query)²)` for every pair: `(batch, n_q, n_k)`.

    `sizes[i][j]` is the H×W at which query map `i` and key map `j` are
    compared; each pooled attention map is computed once.
    """
    cache = {}

    def value(maps, index, size):
        if (id(maps), index, size) not in cache:
            cache[id(maps), index, size] = spatial_attention(
                maps[index], size, pool="energy"
            )
        return cache[id(maps), index, size]

    rows = [
        ops.stack(
            [
                ops.mean(
                    ops.square(value(keys, j, size) - value(queries, i, size)),
                    axis=-1,
                )
                for j, size in enumerate(row)
            ],
            axis=-1,
        )
        for i, row in enumerate(sizes)
    ]
    return ops.stack(rows, axis=1)


def _global_average(feature):
    return ops.mean(ops.cast(feature, "float32"), axis=(1, 2))
