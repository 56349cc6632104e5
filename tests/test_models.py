import functools

import keras
import numpy as np
import pytest
from keras import layers

from keras_kd import data
from keras_kd import models

# On JAX (CPU) every new kernel shape compiles its own truncated-normal
# sampler (about a second each), so the models with the most distinct shapes
# are built on TensorFlow only; the architecture code is the same.
JAX_SKIP = {"mobilenetv2", "vgg13"}
CIFAR_MODELS = [
    name
    for name in models.MODELS
    if not name.startswith(("digits", "fashion", "lenet"))
]
NUM_BLOCKS = {
    "resnet20": 9,
    "resnet32": 15,
    "resnet56": 27,
    "resnet110": 54,
    "resnet8x4": 3,
    "resnet32x4": 15,
    "wrn_16_2": 6,
    "wrn_40_1": 18,
    "wrn_40_2": 18,
    "vgg8": 0,
    "vgg13": 0,
    "mobilenetv2": 17,
}


@functools.cache
def build(name):
    return models.get(name)


def skip_heavy_on_jax(name):
    if keras.backend.backend() == "jax" and name in JAX_SKIP:
        pytest.skip(f"{name} is built on TensorFlow only (JAX compile time).")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet8x4", 1.23e6),
        ("resnet32x4", 7.43e6),
        ("wrn_16_2", 0.70e6),
        ("wrn_40_2", 2.26e6),
    ],
)
def test_parameter_counts(name, expected):
    # Trainable parameters, as PyTorch counts them (no batch-norm statistics).
    model = build(name)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert abs(count - expected) / expected < 0.01


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_and_layer_names(name):
    skip_heavy_on_jax(name)
    model = build(name)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    logits = model(x, training=False)
    assert tuple(logits.shape) == (2, 100)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))

    stages = models.stage_layer_names(model)
    assert stages == ["stem"] + [f"stage{i}" for i in range(1, len(stages))]
    assert len(stages) in (4, 5)
    sizes = [model.get_layer(n).output.shape[1] for n in stages]
    assert sizes == sorted(sizes, reverse=True)
    assert len(model.get_layer("features").output.shape) == 2
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"

    if not NUM_BLOCKS[name]:
        # No residual blocks (VGG): the one finder says so, naming the fix.
        with pytest.raises(ValueError, match="no keras.layers.Add"):
            models.block_layer_names(model)
        return
    blocks = models.block_layer_names(model)
    assert len(blocks) == NUM_BLOCKS[name]
    for block in blocks:
        model.get_layer(block)
    if blocks:
        last_stage = int(stages[-1][len("stage") :])
        assert blocks[0] == "block1_1"
        assert blocks[-1].startswith(f"block{last_stage}_")


def test_resnet_block_names_follow_stages():
    names = models.block_layer_names(build("resnet20"))
    assert names == [f"block{s}_{i}" for s in (1, 2, 3) for i in (1, 2, 3)]
    # Post-activation: the named output is the ReLU after the sum.
    assert isinstance(build("resnet20").get_layer("block2_3"), layers.ReLU)


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="resnet9000.*Available:.*resnet8x4"):
        models.get("resnet9000")


def test_get_passes_classes_and_input_shape():
    model = models.get("digits_cnn_large", num_classes=3, input_shape=(16, 16, 1))
    assert model.input_shape == (None, 16, 16, 1)
    assert model.output_shape == (None, 3)
    with pytest.raises(ValueError, match="6n\\+2"):
        models.cifar_resnet(21)
    with pytest.raises(ValueError, match="6n\\+4"):
        models.wrn(20, 2)


def test_block_names_of_any_functional_model():
    conv = functools.partial(
        layers.Conv2D, 4, padding="same", use_bias=False, kernel_initializer="zeros"
    )
    inputs = keras.Input((8, 8, 4))
    x = conv(3)(inputs)
    x = layers.Add(name="add1")([inputs, x])
    x = layers.ReLU(name="relu1")(x)  # Only consumer of add1: the output.
    y = conv(3)(x)
    y = layers.Add(name="add2")([x, y])  # Pre-activation style.
    z = conv(1)(y)
    z = layers.Add(name="add3")([y, z])
    outputs = layers.Activation("relu", name="act3")(z)
    model = keras.Model(inputs, [outputs, z])  # add3 also feeds the output.
    assert models.block_layer_names(model) == ["relu1", "add2", "act3"]
    with pytest.raises(ValueError, match="stage1"):
        models.stage_layer_names(model)


def test_weight_decay_is_coupled_l2():
    model = models.get("digits_cnn_large", weight_decay=4e-4)
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) == 7  # Stem, 2 x 2 block convs, shortcut, classifier.
    expected = 2e-4 * sum(np.sum(keras.ops.convert_to_numpy(w) ** 2) for w in kernels)
    actual = sum(float(keras.ops.convert_to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)
    assert not models.get("digits_cnn_large").losses


def test_mixed_bfloat16_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.get("digits_cnn_large")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("stage2").output.dtype == "bfloat16"
    logits = model(np.ones((2, 8, 8, 1), "float32"), training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert tuple(logits.shape) == (2, 10)


@pytest.mark.slow  # An accuracy claim after 4 epochs.
def test_digits_teacher_trains():
    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test), info = data.load("digits")
    model = models.get("digits_cnn_large")
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Whole batches only, so JAX compiles one train step.
    n = len(x) // 64 * 64
    model.fit(x[:n] / 255, y[:n], batch_size=64, epochs=4, verbose=0)
    logits = model.predict(x_test / 255, batch_size=len(x_test), verbose=0)
    assert np.mean(np.argmax(logits, axis=-1) == y_test) > 0.9


@pytest.mark.parametrize(
    "teacher, student, sizes",
    [
        ("resnet32x4", "resnet8x4", (16, 16)),
        ("wrn_40_2", "wrn_16_2", (16, 16)),
        ("vgg13", "mobilenetv2", (8, 8)),
    ],
)
def test_hint_layers_are_the_official_feature_two(teacher, student, sizes):
    """RepDistiller's feat[2]: the output of `layer2` / `block2` (16×16 maps)."""
    skip_heavy_on_jax(teacher)
    skip_heavy_on_jax(student)
    t, s = build(teacher), build(student)
    assert models.hint_layer_names(t, s) == ("stage2", "stage2")
    if student.startswith("resnet"):
        # Post-activation ResNet: feat[2] is the last stage-2 block's ReLU.
        last = f"block2_{5 if teacher == 'resnet32x4' else 1}"
        assert t.get_layer("stage2").input is t.get_layer(last).output
        assert isinstance(t.get_layer(last), layers.ReLU)
    if student.startswith("wrn"):
        # WRN: feat[2] is block2's raw residual sum (pre-activation).
        assert isinstance(
            s.get_layer("stage2").input._keras_history.operation, layers.Add
        )
    assert (
        t.get_layer("stage2").output.shape[1],
        s.get_layer("stage2").output.shape[1],
    ) == sizes
    assert models.hint_layer_names(t, s, -1) == ("features", "features")
    with pytest.raises(ValueError, match="out of range"):
        models.hint_layer_names(t, s, 7)


@pytest.mark.parametrize(
    "name, count", [("wrn_40_2", 18), ("wrn_16_2", 6), ("wrn_40_1", 18)]
)
def test_wrn_blocks_are_bn_relu_of_each_residual_sum(name, count):
    """AFD's official WRN (models/wrn.py) returns, for every block, its sum
    after the next block's BN-ReLU (the final BN-ReLU for the last one)."""
    model = build(name)
    names = models.block_layer_names(model)
    assert len(names) == count
    n = count // 3
    assert names == [f"block{s}_{i}" for s in (1, 2, 3) for i in range(1, n + 1)]
    for block in names:
        relu = model.get_layer(block)
        assert isinstance(relu, layers.ReLU)
        bn = relu.input._keras_history.operation
        assert isinstance(bn, layers.BatchNormalization)
        source = bn.input._keras_history.operation
        if isinstance(source, layers.Identity):  # A stage{s} output between.
            source = source.input._keras_history.operation
        assert source is model.get_layer(f"{block}_add")
    assert model.get_layer(names[-1]).input is model.get_layer("final_bn").output
    # The raw sums stay available as stage outputs (RepDistiller's feat list).
    assert model.get_layer("stage3").input is model.get_layer(f"block3_{n}_add").output


def test_block_names_of_a_pre_activation_functional_model():
    """Outside the zoo: the ReLU after the BN that reads the sum."""
    inputs = keras.Input((8, 8, 4))
    x = inputs
    for i in (1, 2):
        y = layers.Conv2D(4, 3, padding="same")(x)
        x = layers.Add(name=f"sum{i}")([x, y])
        act = layers.ReLU(name=f"act{i}")(layers.BatchNormalization()(x))
        x = x if i == 1 else act
        if i == 1:
            x = layers.Add()([x, layers.Conv2D(4, 1)(act)])  # Third sum, no BN.
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    assert models.block_layer_names(model) == ["act1", model.layers[6].name, "act2"]


@pytest.mark.parametrize("name", ["fashion_cnn_large", "fashion_cnn_small"])
def test_fashion_models_forward_on_28x28(name):
    model = models.get(name, num_classes=10, input_shape=(28, 28, 1))
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert models.stage_layer_names(model)[0] == "stem"


def test_lenet5_bn_is_the_official_lenet5_layer_by_layer():
    """ReffAKD's `LeNet5` (fashion_mnist/*.ipynb, cell 10) at 32x32x1."""
    model = models.get("lenet5_bn")
    # PyTorch's parameters, by hand: conv1 1·6·5·5 + 6, bn1 2·6, conv2
    # 6·16·5·5 + 16, bn2 2·16, fc 400·120 + 120, fc1 120·84 + 84, fc2
    # 84·10 + 10.
    torch_params = [156, 12, 2416, 32, 48120, 10164, 850]
    assert sum(torch_params) == 61750
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 61750
    assert model.count_params() == 61750 + 2 * (6 + 16)  # BN statistics.
    shapes = {
        "stage1": (14, 14, 6),
        "stage2": (5, 5, 16),
        "flatten": (400,),
        "fc": (120,),
        "features": (84,),
        "logits": (10,),
    }
    for name, shape in shapes.items():
        assert tuple(model.get_layer(name).output.shape[1:]) == shape, name
    assert models.stage_layer_names(model) == ["stage1", "stage2"]
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"


def test_lenet5_bn_starts_as_pytorch_defaults():
    """Kernels and biases uniform in ±1/sqrt(fan_in), as PyTorch's
    `Conv2d`/`Linear` (fan_in 25 for conv1, 150 for conv2, 400 for fc)."""
    keras.utils.set_random_seed(0)
    model = models.get("lenet5_bn")
    for name, fan_in in [("stage1_conv", 25), ("stage2_conv", 150), ("fc", 400)]:
        bound = 1 / np.sqrt(fan_in)
        for weight in model.get_layer(name).weights:
            values = keras.ops.convert_to_numpy(weight)
            assert np.abs(values).max() <= bound, (name, weight.path)
            if values.size > 100:  # Uniform: values near the bound too.
                assert np.abs(values).max() > 0.9 * bound, (name, weight.path)
