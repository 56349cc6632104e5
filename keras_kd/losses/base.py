import keras
from keras import ops

from keras_kd._compat import to_snake_case


class DistillationTerm(keras.layers.Layer):
    """Base class of the knowledge terms a `keras_kd.Distiller` combines.

    A term names the layers it reads (`teacher_layer_names`,
    `student_layer_names`; the final outputs are always available as
    `"logits"`), is built once from their shapes before training, and returns
    a float32 loss: one value per sample (shape `(batch,)`), per token
    (`(batch, length)` for sequence logits `(batch, length, classes)`, in
    terms that set `reads_sequences`), so the Distiller can apply
    `sample_weight` (see `weighted_mean`), or a scalar for batch-level
    terms.

    Terms are layers, so they may own trainable weights (aligners, heads)
    that are optimised together with the student and are not part of it.

    Subclasses implement `build(teacher_outputs_shape, student_outputs_shape)`
    where the first is a list (one entry per teacher) of `{name: shape}`
    dicts and the second a `{name: shape}` dict (the names let Keras build a
    term from its first call, as for any layer), and
    `call(teacher_outputs, student_outputs, labels=None, teacher_weights=None)`
    with outputs in the same structure and `teacher_weights` a list of floats
    summing to 1. `labels` are the batch's labels as given to `fit` (one per
    original image; a term that sets `num_views > 1` expands its batch in
    `transform_inputs` into views concatenated on axis 0, view 0 being the
    original, and receives outputs for all views). A `kd.SoftLabelTeacher`'s
    output is `{"probabilities": ...}` instead of logits.

    Example:

    ```python
    class MeanLogitGap(kd.losses.DistillationTerm):
        def call(self, teacher_outputs, student_outputs, labels=None,
                 teacher_weights=None):
            z_t = self.teacher_mean(teacher_outputs, "logits", teacher_weights)
            z_s = ops.cast(student_outputs["logits"], "float32")
            return ops.mean(ops.abs(z_t - z_s), axis=-1)
    ```
    """

    #: Whether the term compares class scores, so teachers and student must
    #: share the label space.
    uses_logits = False
    #: Whether the term reads sequence logits or features `(batch, length,
    #: ...)` and gives one value per token, so a `(batch, length)`
    #: `sample_weight` applies. Other terms refuse sequence logits.
    reads_sequences = False
    #: How many views of each image `transform_inputs` produces.
    num_views = 1
    #: Names of the weighted parts of a multi-part term. When set, `call`
    #: returns `{name: loss}`; the Distiller adds the parts up and reports
    #: each as the metric `<term name>_<part>`.
    component_names = ()
    #: Names of the batch entries besides the images that the term reads
    #: (e.g. `"example_index"`). `fit` then takes `x` as a dict
    #: `{"inputs": images, name: values}` (see `kd.data.with_example_index`),
    #: the models see only `"inputs"`, and `call` gets `side_inputs={name:
    #: tensor}`.
    side_inputs = ()

    def __init__(self, teacher_layer_names=(), student_layer_names=(), **kwargs):
        # Named after the class without Keras' global counter, so the
        # metric keeps the same name across runs in one process.
        kwargs.setdefault("name", to_snake_case(type(self).__name__))
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.teacher_layer_names = list(teacher_layer_names)
        self.student_layer_names = list(student_layer_names)

    def build(self, teacher_outputs_shape, student_outputs_shape):
        pass

    def on_epoch_begin(self, epoch):
        """Called by `Distiller.fit` before each epoch (0-based, counting
        from `initial_epoch`). A term whose loss follows the epoch (a warm-up,
        a schedule) stores it in a non-trainable variable here and reads the
        variable in `call`, so the compiled step sees each new value."""

    def transform_inputs(self, x, training=True):
        """Expands a batch into `num_views` views (concatenated on axis 0)."""
        return x

    def teacher_mean(self, teacher_outputs, key, teacher_weights):
        """Weighted mean over teachers of one output, in float32."""
        values = [ops.cast(out[key], "float32") for out in teacher_outputs]
        return sum(w * v for w, v in zip(teacher_weights, values))

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.pop("trainable", None)
        return config


def teacher_probabilities(teacher_output, temperature):
    """`softmax(z_t / T)`, or a label teacher's fixed probabilities as given."""
    if "probabilities" in teacher_output:
        return ops.cast(teacher_output["probabilities"], "float32")
    logits = ops.cast(teacher_output["logits"], "float32")
    return ops.softmax(logits / temperature, axis=-1)


def kl_divergence(target, log_pred):
    """`KL(target ‖ pred) = Σ_c target · (log target − log_pred)` per sample.

    Classes where `target` is 0 contribute 0 (the limit of `p log p`).
    """
    positive = target > 0
    log_target = ops.log(ops.where(positive, target, 1.0))
    return ops.sum(ops.where(positive, target * (log_target - log_pred), 0.0), axis=-1)


def tempered_kl(target, student_output, temperature):
    """`T² · KL(target ‖ softmax(z_s / T))` per sample, in float32."""
    t = temperature
    z_s = ops.cast(student_output["logits"], "float32")
    return (t * t) * kl_divergence(target, ops.log_softmax(z_s / t, axis=-1))


def class_indices(labels, logits_shape=None, owner="This term"):
    """int32 class indices of sparse, `(..., 1)` or one-hot labels.

    Without `logits_shape`: one per sample, `(batch,)`. With the shape of
    the logits the labels go with: that shape without the class axis,
    `(batch,)` for `(batch, classes)` and `(batch, length)` for sequence
    logits `(batch, length, classes)`; labels of another shape (one per
    token for per-sample logits, or the reverse) raise a ValueError that
    names `owner`.
    """
    labels = ops.convert_to_tensor(labels)
    if logits_shape is None:
        if len(labels.shape) == 2 and labels.shape[-1] != 1:
            labels = ops.argmax(labels, axis=-1)
        return ops.cast(ops.reshape(labels, (-1,)), "int32")
    logits_shape, given = tuple(logits_shape), tuple(labels.shape)
    rank, shape = len(logits_shape), given
    if len(shape) == rank and shape[-1] == 1:
        labels, shape = ops.squeeze(labels, -1), shape[:-1]
    elif len(shape) == rank and (
        None in (shape[-1], logits_shape[-1]) or shape[-1] == logits_shape[-1]
    ):  # One-hot.
        labels, shape = ops.argmax(labels, axis=-1), shape[:-1]
    lengths = {shape[1:2], logits_shape[1:2]} if rank == 3 else set()
    if len(shape) != rank - 1 or len(lengths - {(None,)}) > 1:
        want = (
            "one label per token: (batch, length) class indices or "
            "(batch, length, classes) one-hot"
            if rank == 3
            else "one label per sample: (batch,) class indices or "
            "(batch, classes) one-hot"
        )
        raise ValueError(
            f"{owner} got labels of shape {given} for logits of shape "
            f"{logits_shape}; it needs {want}. Give `y` that matches the "
            f"model's output (per-token labels only for sequence logits)."
        )
    return ops.cast(labels, "int32")


def standardize_logits(logits):
    """Z-scores logits over the class axis (per sample, or per token of
    sequence logits), in float32.

    `(z − mean(z)) / (1e-7 + std(z))` with the unbiased standard deviation
    (divisor `C − 1`), as the logit standardization code (Sun et al., CVPR
    2024) computes it with `torch.std`.
    """
    z = ops.cast(logits, "float32")
    num_classes = ops.shape(z)[-1]
    centred = z - ops.mean(z, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (
        ops.cast(num_classes, "float32") - 1.0
    )
    return centred / (1e-7 + ops.sqrt(variance))


def check_standardizable(term, teacher_outputs_shape):
    """Raises if `term.standardize` is set for a label teacher's table."""
    if term.standardize and any(
        "probabilities" in shapes for shapes in teacher_outputs_shape
    ):
        raise ValueError(
            f"{type(term).__name__}(standardize=True) z-scores teacher "
            f"logits, but a kd.SoftLabelTeacher gives probabilities, whose "
            f"z-score has no meaning. Use standardize=False with a label "
            f"teacher, or a trained teacher model."
        )


#: The terms that give one value per token on sequence inputs.
SEQUENCE_TERMS = (
    "LogitsDistillation, DecoupledDistillation, "
    "CurriculumTemperatureDistillation, SubsetLogitsDistillation, "
    "FeatureDistillation and wrapped keras.distillation losses"
)


def weighted_mean(value, sample_weight=None, name=None):
    """A term's value reduced to a float32 scalar under `sample_weight`.

    - A scalar (a batch-level term) is returned as is.
    - Per-sample values `(batch,)`: `mean(w · value)`, Keras' reduction
      (`"sum_over_batch_size"`, as for the student loss).
    - Per-token values `(batch, length, ...)` (sequence logits): the mean
      over real tokens, `Σ w · value / Σ w` (TRL's and torchtune's
      reduction), with `w` of shape `(batch,)` or `(batch, length)`
      broadcast over the value; a fully padded row contributes nothing and
      an all-padding batch gives 0.

    Per-token weights `(batch, length)` for a scalar or per-sample value
    raise a ValueError naming the term (`name`). Without weights, the plain
    mean.

    Example:

    ```python
    kl = kd.losses.LogitsDistillation()(  # (batch, length) for (B, T, V)
        [{"logits": z_t}], {"logits": z_s}, teacher_weights=[1.0])
    loss = weighted_mean(kl, padding_mask)  # mean over real tokens
    ```
    """
    value = ops.cast(value, "float32")
    rank = len(value.shape)
    if sample_weight is None:
        return value if rank == 0 else ops.mean(value)
    weights = ops.cast(sample_weight, "float32")
    if rank < 2 and any(size != 1 for size in weights.shape[1:]):
        raise ValueError(
            f"{f'Term {name!r}' if name else 'The term'} gives "
            f"{'one value per sample' if rank else 'one value per batch'}, "
            f"but sample_weight has shape {tuple(weights.shape)}, one "
            f"weight per token. A padding mask needs terms that give one "
            f"value per token on sequence inputs (batch, length, ...): "
            f"{SEQUENCE_TERMS}. Use those, or give weights of shape (batch,)."
        )
    if rank == 0:
        return value
    if rank == 1:
        return ops.mean(value * ops.reshape(weights, (-1,)))
    while len(weights.shape) < rank:
        weights = ops.expand_dims(weights, -1)
    weights = weights * ops.ones_like(value)
    # `where`, not a product alone: a padded position's value never
    # reaches the sum, even if it is not finite.
    total = ops.sum(ops.where(weights != 0, weights * value, 0.0))
    count = ops.sum(weights)
    return ops.where(count > 0, total / ops.where(count > 0, count, 1.0), 0.0)


def per_sample_mean(x):
    """Mean over every axis but the batch axis, in float32."""
    x = ops.cast(x, "float32")
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def sample_or_token_mean(x, sequence):
    """One float32 value per sample (the mean over every axis but the
    batch axis) or, with `sequence` (inputs `(batch, length, ...)`), per
    token (the mean over every axis but the first two)."""
    x = ops.cast(x, "float32")
    if len(x.shape) == 0:
        return x
    if not sequence or len(x.shape) < 2:
        return per_sample_mean(x)
    shape = ops.shape(x)
    return ops.mean(ops.reshape(x, (shape[0], shape[1], -1)), axis=-1)


def flat_features(outputs, name):
    """The output `name` flattened to `(batch, features)`, in float32."""
    x = ops.cast(outputs[name], "float32")
    return ops.reshape(x, (ops.shape(x)[0], -1))


def check_batch_sizes(term, teacher_outputs_shape, student_outputs_shape):
    """ValueError unless the term's tapped outputs share one batch size.

    Batch-level terms compare samples of one batch with each other, so every
    teacher and the student must see the same batch. Unknown (`None`) batch
    sizes pass; they come from one batch in a `kd.Distiller`.
    """
    sizes = {
        f"student '{name}'": student_outputs_shape[name][0]
        for name in term.student_layer_names
    }
    for i, shapes in enumerate(teacher_outputs_shape):
        sizes.update(
            {
                f"teacher {i} '{name}'": shapes[name][0]
                for name in term.teacher_layer_names
            }
        )
    if len({size for size in sizes.values() if size is not None}) > 1:
        raise ValueError(
            f"{type(term).__name__} compares the samples of one batch, but "
            f"its inputs have different batch sizes: {sizes}. Feed teachers "
            f"and student the same batch."
        )


def l2_normalize(x, axis=-1, eps=1e-12):
    """`x / max(‖x‖, eps)` along `axis`, as `torch.nn.functional.normalize`.

    Unlike `keras.ops.normalize`, the gradient at an all-zero vector is
    finite (0) on every backend.
    """
    square = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(square, eps * eps))
