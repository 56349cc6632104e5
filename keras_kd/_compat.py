"""The private Keras APIs keras_kd uses, in one place.

Each entry names the public API it stands in for, or why none exists.
"""

# Keras' own loss scaling under `tf.distribute` (no public API); the
# Distiller scales its total loss like `keras.Model.compute_loss` does.
from keras.src.losses.loss import scale_loss_for_distribution  # noqa: F401
from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401

# Stands in for assigning attributes without Keras' tracking (no public API):
# taps share the models' weights, which must be saved once.
from keras.src.utils.tracking import DotNotTrackScope  # noqa: F401


def producing_layer(tensor):
    """The layer that produced a symbolic tensor of a functional model.

    Stands in for walking `model.layers` for the one whose `output` is the
    tensor (public, but ambiguous for shared layers).
    """
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None
