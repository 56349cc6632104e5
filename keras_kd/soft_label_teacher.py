import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftLabelTeacher(keras.layers.Layer):
    """A teacher made of a fixed per-class soft-label table (ReffAKD, §5).

    Takes a teacher's place in `kd.Distiller`: for a sample of class `y` it
    supplies `table[y]` as the target probabilities, which logit terms such
    as `LogitsDistillation` use as given (the table is not re-tempered). It
    runs no network, so it costs nothing per step.

    Example:

    ```python
    table = kd.reffakd.soft_label_table(similarity)
    distiller = kd.Distiller(kd.SoftLabelTeacher(table), student,
                             kd.losses.LogitsDistillation(temperature=4.0))
    ```
    """

    def __init__(self, table, **kwargs):
        super().__init__(trainable=False, dtype="float32", **kwargs)
        table = np.asarray(table, dtype="float32")
        if table.ndim != 2 or table.shape[0] != table.shape[1]:
            raise ValueError(
                f"The soft-label table must be a square (classes, classes) "
                f"matrix, got shape {table.shape}."
            )
        if (table < 0).any() or not np.allclose(table.sum(axis=1), 1, atol=1e-4):
            raise ValueError(
                "Each row of the soft-label table must be a probability "
                "distribution (non-negative, summing to 1); build it with "
                "kd.reffakd.soft_label_table(similarity)."
            )
        self.num_classes = table.shape[0]
        self.table = self.add_weight(
            shape=table.shape,
            initializer=keras.initializers.Constant(table),
            trainable=False,
            name="table",
        )

    def call(self, labels):
        """`{"probabilities": table[labels]}` for class indices of shape
        `(batch,)`, `(batch, 1)` or `(batch, length)` (one row per token)."""
        labels = ops.cast(labels, "int32")
        if len(labels.shape) != 2 or labels.shape[-1] == 1:
            labels = ops.reshape(labels, (-1,))
        return {"probabilities": ops.take(self.table, labels, axis=0)}

    def get_config(self):
        config = super().get_config()
        for key in ("trainable", "dtype"):
            config.pop(key, None)
        return {**config, "table": ops.convert_to_numpy(self.table).tolist()}
