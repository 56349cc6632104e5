"""Hidden-state alignment between layers of different widths:
`FeatureDistillation(projection=True)` per token under a padding mask,
against NumPy, in a Distiller, and on keras_hub GPT-2 layers read by name."""

import os

import keras
import numpy as np
import pytest
from helpers import sparse_ce
from keras import ops

import keras_kd as kd
from keras_kd import model_outputs
from keras_kd.losses.base import weighted_mean

pytestmark = pytest.mark.multi_backend

LENGTH, VOCAB = 5, 7


def np_distance(f_t, f_s, loss):
    """Per-token MSE or 1 − cosine over the feature axis, float64."""
    f_t, f_s = np.float64(f_t), np.float64(f_s)
    if loss == "mse":
        return np.mean((f_s - f_t) ** 2, axis=-1)
    unit = lambda f: f / np.linalg.norm(f, axis=-1, keepdims=True)
    return 1.0 - np.sum(unit(f_s) * unit(f_t), axis=-1)


def padding_mask(batch=4):
    """Row 0 ends in padding, row 2 is all padding."""
    mask = np.ones((batch, LENGTH), "float32")
    mask[0, 3:] = 0.0
    mask[2] = 0.0
    return mask


def projection_weights(term, i=0):
    kernel, bias = term.projections[i].get_weights()
    return np.float64(kernel), np.float64(bias)


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_projection_per_token_matches_numpy(loss):
    rng = np.random.default_rng(0)
    f_s = rng.normal(size=(4, LENGTH, 4)).astype("float32")
    f_a = rng.normal(size=(4, LENGTH, 6)).astype("float32")
    f_b = rng.normal(size=(4, LENGTH, 3)).astype("float32")
    term = kd.losses.FeatureDistillation("h", "g", loss=loss, projection=True)
    term.build(
        [{"h": (None, LENGTH, 6)}, {"h": (None, LENGTH, 3)}], {"g": (None, LENGTH, 4)}
    )
    for dense in term.projections:  # A bias that is not 0.
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel, rng.normal(size=bias.shape).astype("float32")])
    assert len(term.trainable_variables) == 4
    per_token = term(
        [{"h": ops.convert_to_tensor(f_a)}, {"h": ops.convert_to_tensor(f_b)}],
        {"g": ops.convert_to_tensor(f_s)},
        teacher_weights=[0.25, 0.75],
    )
    expected = 0.0
    for i, (w, f_t) in enumerate([(0.25, f_a), (0.75, f_b)]):
        kernel, bias = projection_weights(term, i)
        expected = expected + w * np_distance(
            f_t, np.float64(f_s) @ kernel + bias, loss
        )
    assert tuple(per_token.shape) == (4, LENGTH)
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_token), expected, rtol=1e-5, atol=1e-6
    )
    mask = padding_mask()
    np.testing.assert_allclose(
        ops.convert_to_numpy(weighted_mean(per_token, mask)),
        masked_mean(expected, mask),
        rtol=1e-5,
    )


def token_lm(width, name):
    """Embedding → Dense "hidden" of `width` → per-token logits."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, width)(inputs)
    h = keras.layers.Dense(width, activation="tanh", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(h), name=name)


def test_projection_trains_with_the_student_in_a_distiller():
    keras.utils.set_random_seed(0)
    teacher, student = token_lm(8, "t"), token_lm(4, "s")
    term = kd.losses.FeatureDistillation("hidden", "hidden", projection=True)
    distiller = kd.Distiller(teacher, student, term, student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(0.5), loss=sparse_ce())
    assert term.projections[0].kernel.shape == (4, 8)
    assert any(v is term.projections[0].kernel for v in distiller.trainable_variables)
    rng = np.random.default_rng(1)
    x = rng.integers(0, VOCAB, (4, LENGTH)).astype("int32")
    y, mask = np.roll(x, -1, axis=1), padding_mask()
    y_pred = distiller(x, training=True)  # No dropout: as in evaluation.
    distiller.compute_loss(x, y, y_pred, sample_weight=mask)
    f_t = ops.convert_to_numpy(y_pred["teachers"][0]["hidden"])
    f_s = ops.convert_to_numpy(y_pred["student"]["hidden"])
    kernel, bias = projection_weights(term)
    expected = masked_mean(
        np_distance(f_t, np.float64(f_s) @ kernel + bias, "mse"), mask
    )
    got = ops.convert_to_numpy(distiller.distillation_loss_tracker.result())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    before = [w.copy() for w in teacher.get_weights()]
    distiller.fit(x, y, sample_weight=mask, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(projection_weights(term)[0], kernel)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_width_mismatch_and_config():
    term = kd.losses.FeatureDistillation("a", "b", loss="cosine", projection=True)
    restored = kd.losses.FeatureDistillation.from_config(term.get_config())
    assert (restored.projection, restored.loss) == (True, "cosine")
    plain = kd.losses.FeatureDistillation("a", "b")
    assert plain.get_config()["projection"] is False
    with pytest.raises(ValueError, match="projection=True"):
        plain.build([{"a": (None, 5, 8)}], {"b": (None, 5, 4)})
    with pytest.raises(ValueError, match="other axes must match"):
        term.build([{"a": (None, 6, 8)}], {"b": (None, 5, 4)})
    unbuilt = kd.losses.FeatureDistillation("a", "b", projection=True)
    with pytest.raises(ValueError, match="when built"):
        unbuilt.compute_loss(np.ones((2, 5, 8)), np.ones((2, 5, 4)))


def gpt2(keras_hub, num_layers, hidden_dim, name):
    """A random-initialised GPT-2 causal LM from config (no download)."""
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=32,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=8,
        name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None, name=name)


@pytest.mark.skipif(
    keras.backend.backend() == "jax" and not os.environ.get("KERAS_KD_HUB_ON_JAX"),
    reason="GPT-2 costs about 20 s a case on JAX (it passes there: set "
    "KERAS_KD_HUB_ON_JAX=1); TensorFlow and PyTorch run it.",
)
@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_keras_hub_gpt2_hidden_states_of_different_widths(loss):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    teacher, student = (
        gpt2(keras_hub, 2, 16, "teacher"),
        gpt2(keras_hub, 1, 8, "student"),
    )
    term = kd.losses.FeatureDistillation(
        "transformer_layer_1", "transformer_layer_0", loss=loss, projection=True
    )
    distiller = kd.Distiller(teacher, student, term, student_loss_weight=0.5)
    # Eager: tracing GPT-2's step costs seconds.
    distiller.compile(keras.optimizers.Adam(1e-2), loss=sparse_ce(), run_eagerly=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 32, (4, 8)).astype("int32")
    padding = np.ones((4, 8), bool)
    padding[0, 5:] = False
    padding[1] = False
    x = {"token_ids": tokens, "padding_mask": padding}
    y, mask = np.roll(tokens, -1, axis=1), padding.astype("float32")
    result = distiller.evaluate(x, y, sample_weight=mask, verbose=0, return_dict=True)

    def hidden(model, name):  # Read independently of keras_kd's taps.
        layer = model.backbone.get_layer(name)
        return ops.convert_to_numpy(keras.Model(model.inputs, layer.output)(x))

    f_t = hidden(teacher, "transformer_layer_1")
    f_s = hidden(student, "transformer_layer_0")
    assert f_t.shape == (4, 8, 16) and f_s.shape == (4, 8, 8)
    kernel, bias = projection_weights(term)
    expected = masked_mean(
        np_distance(f_t, np.float64(f_s) @ kernel + bias, loss), mask
    )
    np.testing.assert_allclose(result["feature_distillation"], expected, rtol=1e-4)
    before = [w.copy() for w in teacher.get_weights()]
    distiller.fit(x, y, sample_weight=mask, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(projection_weights(term)[0], kernel)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_layers_of_nested_models_by_name_or_path():
    inputs = keras.Input((LENGTH, 3))

    def inner(name):
        h = keras.layers.Dense(4, name="h")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2)(h), name=name)

    a, b = inner("a"), inner("b")
    outer = keras.Model(inputs, keras.layers.Add()([a(inputs), b(inputs)]))
    with pytest.raises(ValueError, match=r"several layers named 'h'.*'a/h', 'b/h'"):
        model_outputs.tap(outer, ["h"], "teacher")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model_outputs.tap(outer, ["nope"], "teacher")
    tap, shapes = model_outputs.tap(outer, ["b/h"], "teacher")
    assert shapes["b/h"] == (None, LENGTH, 4)
    x = np.random.default_rng(0).normal(size=(2, LENGTH, 3)).astype("float32")
    want = keras.Model(inputs, b.get_layer("h").output)(x)
    np.testing.assert_allclose(
        ops.convert_to_numpy(tap([x])["b/h"]), ops.convert_to_numpy(want), rtol=1e-6
    )
    # A nested model built on its own Input is out of reach of the outer one.
    own = keras.Input((LENGTH, 3))
    apart = keras.Model(own, keras.layers.Dense(2, name="g")(own), name="apart")
    wrapped = keras.Model(inputs, apart(inputs))
    with pytest.raises(ValueError, match=r"\['g'\] of nested models.*not reachable"):
        model_outputs.tap(wrapped, ["g"], "student")
