"""Terms that compare teacher and student layers paired in order."""

from keras_kd.losses.base import DistillationTerm


def layer_names(names):
    """One layer name or a sequence of names, as a list."""
    return [names] if isinstance(names, str) else list(names)


_HINT = "Pick convolutional layers (e.g. the stage outputs)."


def feature_map_shape(term, shapes, name, role, hint=_HINT):
    """The `(batch, H, W, C)` shape of the output `name`, or a ValueError."""
    shape = tuple(shapes[name])
    if len(shape) != 4:
        raise ValueError(
            f"{type(term).__name__} needs feature maps (batch, H, W, C), but "
            f"the {role} output '{name}' has shape {shape}. {hint}"
        )
    return shape


class LayerPairTerm(DistillationTerm):
    """A term over teacher and student layers paired in order.

    Subclasses compute one loss per layer pair; `sum_over_pairs` weighs
    them over the teachers. Example:

    ```python
    class MapGap(LayerPairTerm):
        def call(self, teacher_outputs, student_outputs, labels=None,
                 teacher_weights=None):
            return self.sum_over_pairs(
                teacher_outputs, student_outputs, teacher_weights,
                lambda m, i, f_t, f_s: per_sample_mean(f_t - f_s))
    ```
    """

    def __init__(self, teacher_layer_names, student_layer_names, **kwargs):
        teacher_layer_names = layer_names(teacher_layer_names)
        student_layer_names = layer_names(student_layer_names)
        if len(teacher_layer_names) != len(student_layer_names) or not (
            teacher_layer_names
        ):
            raise ValueError(
                f"{type(self).__name__} pairs teacher and student layers in "
                f"order, so it needs two non-empty lists of the same length; "
                f"got {len(teacher_layer_names)} teacher layers "
                f"{teacher_layer_names} and {len(student_layer_names)} "
                f"student layers {student_layer_names}."
            )
        super().__init__(teacher_layer_names, student_layer_names, **kwargs)

    def pair_shapes(self, teacher_outputs_shape, student_outputs_shape, hint=_HINT):
        """Per teacher, per pair: `(teacher_shape, student_shape)` of the
        two feature maps (`feature_map_shape` checks each)."""
        student_shapes = [
            feature_map_shape(self, student_outputs_shape, name, "student", hint)
            for name in self.student_layer_names
        ]
        return [
            [
                (feature_map_shape(self, shapes, name, "teacher", hint), s)
                for name, s in zip(self.teacher_layer_names, student_shapes)
            ]
            for shapes in teacher_outputs_shape
        ]

    def common_map_sizes(self, teacher_outputs_shape, student_outputs_shape):
        """Per teacher, per pair: the `(H, W)` both maps are pooled to (the
        smaller of each axis)."""
        return [
            [tuple(map(min, t[1:3], s[1:3])) for t, s in pairs]
            for pairs in self.pair_shapes(teacher_outputs_shape, student_outputs_shape)
        ]

    def sum_over_pairs(
        self, teacher_outputs, student_outputs, teacher_weights, pair_loss
    ):
        """`Σ_m w_m Σ_i pair_loss(m, i, F_t, F_s)` over the teachers `m`
        and the layer pairs `i`."""
        total = 0.0
        for m, (w, out) in enumerate(zip(teacher_weights, teacher_outputs)):
            for i, (t_name, s_name) in enumerate(
                zip(self.teacher_layer_names, self.student_layer_names)
            ):
                loss = pair_loss(m, i, out[t_name], student_outputs[s_name])
                total = total + w * loss
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "teacher_layer_names": self.teacher_layer_names,
            "student_layer_names": self.student_layer_names,
        }
