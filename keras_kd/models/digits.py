"""Small residual CNNs for scikit-learn's 8x8 digits, for quick experiments."""

from keras_kd.models.resnet import residual_net


def digits_cnn_large(num_classes=10, input_shape=(8, 8, 1), weight_decay=0.0):
    """Teacher for digits: stem 32, stages of one residual block, 32 and 64 wide.

    Stages `stage1` (8x8) and `stage2` (4x4), blocks `block1_1`, `block2_1`.
    Reaches about 98% test accuracy after a few epochs on CPU.

    Example:

    ```python
    (x, y), (x_test, y_test), info = keras_kd.data.load("digits")
    teacher = keras_kd.models.digits_cnn_large()
    ```
    """
    return residual_net(
        1,
        [32, 32, 64],
        (1, 2),
        num_classes,
        input_shape,
        weight_decay,
        name="digits_cnn_large",
    )


def digits_cnn_small(num_classes=10, input_shape=(8, 8, 1), weight_decay=0.0):
    """Student for digits: the teacher's layout at 8, 8 and 16 channels.

    5,266 parameters, 15x fewer than `digits_cnn_large`. At 4, 4 and 8
    channels (1,454 parameters) KD gained less and not on every seed.
    """
    return residual_net(
        1,
        [8, 8, 16],
        (1, 2),
        num_classes,
        input_shape,
        weight_decay,
        name="digits_cnn_small",
    )


def fashion_cnn_large(num_classes=10, input_shape=(28, 28, 1), weight_decay=0.0):
    """Teacher for 28x28 images on 2 CPU cores: stem 16, stages 32 and 64
    wide at strides 2 and 2 (14x14 and 7x7), one residual block each.

    Example:

    ```python
    teacher = keras_kd.models.fashion_cnn_large()
    ```
    """
    return residual_net(
        1,
        [16, 32, 64],
        (2, 2),
        num_classes,
        input_shape,
        weight_decay,
        name="fashion_cnn_large",
    )


def fashion_cnn_small(num_classes=10, input_shape=(28, 28, 1), weight_decay=0.0):
    """Student for `fashion_cnn_large`: the same layout at 8, 8 and 16
    channels."""
    return residual_net(
        1,
        [8, 8, 16],
        (2, 2),
        num_classes,
        input_shape,
        weight_decay,
        name="fashion_cnn_small",
    )
