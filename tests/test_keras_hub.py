"""keras_hub: a GPT-2 causal LM teacher and student built from config
(random weights, no download) distil through `fit` with the padding mask.

Not marked multi_backend: tracing GPT-2 costs about 20 s on JAX; the
backend-sensitive sequence paths are tests/test_sequence_distillation.py's.
"""

import keras
import numpy as np
import pytest
from helpers import sparse_ce
from keras import ops
from test_sequence_distillation import np_token_kd

import keras_kd as kd

keras_hub = pytest.importorskip("keras_hub")


def gpt2(num_layers, hidden_dim, name):
    """A random-initialised GPT-2 causal LM built from config (no download)."""
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


def test_keras_hub_gpt2_causal_lm_distils_with_its_padding_mask():
    keras.utils.set_random_seed(0)
    teacher = gpt2(2, 16, "teacher")
    student = gpt2(1, 8, "student")
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 32, (4, 8)).astype("int32")
    padding = np.ones((4, 8), bool)
    padding[0, 5:] = False
    padding[1] = False
    # What a CausalLM preprocessor yields: (x, next tokens, padding mask).
    x = {"token_ids": tokens, "padding_mask": padding}
    y, sample_weight = np.roll(tokens, -1, axis=1), padding.astype("float32")
    distiller = kd.Distiller(teacher, student, kd.losses.LogitsDistillation(2.0))
    # Eager: tracing GPT-2's step costs seconds; the compiled step on
    # sequence logits is tested in test_sequence_distillation.py.
    distiller.compile(keras.optimizers.Adam(1e-3), loss=sparse_ce(), run_eagerly=True)
    before = [w.copy() for w in student.get_weights()]
    history = distiller.fit(
        x, y, sample_weight=sample_weight, batch_size=2, epochs=1, verbose=0
    ).history
    assert all(np.isfinite(v).all() for v in history.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    result = distiller.evaluate(
        x, y, sample_weight=sample_weight, batch_size=4, verbose=0, return_dict=True
    )
    z_t = ops.convert_to_numpy(teacher(x))
    z_s = ops.convert_to_numpy(student(x))
    kd_loss = (np_token_kd(z_t, z_s, 2.0) * sample_weight).sum() / sample_weight.sum()
    np.testing.assert_allclose(result["logits_distillation"], kd_loss, rtol=1e-4)
