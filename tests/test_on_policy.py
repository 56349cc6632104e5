"""`kd.on_policy`: the seeded choice of batches, the student's samples and
their weights, and the Distiller's divergence over generated tokens only."""

import keras
import numpy as np
import pytest
from helpers import sparse_ce
from keras import ops
from test_sequence_distillation import np_token_kd

import keras_kd as kd
from keras_kd.on_policy import OnPolicyBatches
from keras_kd.on_policy import chosen_batches
from keras_kd.on_policy import continuation_batch
from keras_kd.on_policy import prompt_lengths

keras_hub = pytest.importorskip("keras_hub")

VOCAB, LENGTH = 32, 12


def gpt2(num_layers=1, hidden_dim=16, name="student"):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=LENGTH,
        name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None, name=name)


def forcing(model, token):
    """Makes `model`'s logits `50` for `token` and 0 elsewhere, everywhere:
    the final layer norm outputs a constant, the tied embedding reads it."""
    backbone = model.backbone
    norm = backbone.get_layer("layer_norm")
    width = backbone.hidden_dim
    norm.gamma.assign(np.zeros(width, "float32"))
    norm.beta.assign(np.eye(width, dtype="float32")[0] * 50.0)
    table = np.zeros((VOCAB, width), "float32")
    table[token, 0] = 1.0
    backbone.token_embedding.embeddings.assign(table)
    return model


def lm_batches(n=6, batch=4, seed=0):
    """`n` CausalLM batches; row 0 of each has 7 real tokens of 12."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, VOCAB, (batch, LENGTH + 1)).astype("int32")
        mask = np.ones((batch, LENGTH + 1), bool)
        mask[0, 7:] = False
        x = {"token_ids": tokens[:, :-1], "padding_mask": mask[:, :-1]}
        out.append((x, tokens[:, 1:], mask[:, 1:].astype("float32")))
    return out


def test_the_seeded_fraction_of_batches_is_on_policy():
    ds = OnPolicyBatches([None] * 200, gpt2(), fraction=0.5, seed=3)
    chosen = np.zeros(200, bool)
    chosen[ds.on_policy_indices()] = True
    expected = np.random.default_rng([3, 0]).random(200) < 0.5
    np.testing.assert_array_equal(chosen, expected)
    assert abs(chosen.mean() - 0.5) < 0.1  # Binomial(200, 0.5): 3 sd ≈ 0.1.
    assert [ds.is_on_policy(i) for i in range(200)] == list(expected)
    ds.on_epoch_end()  # Another epoch, another seeded choice.
    np.testing.assert_array_equal(
        chosen_batches(200, 0.5, seed=3, epoch=1)[ds.on_policy_indices()], True
    )
    assert not np.array_equal(ds.on_policy_indices(), np.flatnonzero(expected))
    assert not chosen_batches(50, 0.0).any() and chosen_batches(50, 1.0).all()
    with pytest.raises(ValueError, match="fraction must be in"):
        chosen_batches(5, 1.5)


def test_zero_fraction_yields_the_data_unchanged():
    batches = lm_batches()
    ds = OnPolicyBatches(batches, gpt2(), fraction=0.0)
    assert ds.sampler is None and len(ds) == len(batches)
    for i, batch in enumerate(batches):
        assert ds[i] is batch


def test_continuation_batch_weights_only_generated_labels():
    mask = np.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(prompt_lengths(mask, 3), [3, 1, 1])
    tokens = np.arange(15).reshape(3, 5)
    x, y, w = continuation_batch(tokens, np.array([3, 1, 1]))
    assert x["padding_mask"].all()
    np.testing.assert_array_equal(y[:, :-1], tokens[:, 1:])
    # The label of position t is token t+1: weighted iff it was generated.
    np.testing.assert_array_equal(
        w, [[0, 0, 1, 1, 0], [1, 1, 1, 1, 0]] + [[1] * 4 + [0]]
    )


def test_a_forcing_student_continues_with_its_token_after_the_prompt():
    keras.utils.set_random_seed(0)
    student = forcing(gpt2(), token=5)
    batches = lm_batches(n=3)
    ds = OnPolicyBatches(batches, student, fraction=1.0, prompt_length=4, seed=0)
    for i, (x0, _, _) in enumerate(batches):
        x, y, w = ds[i]
        prompts = prompt_lengths(x0["padding_mask"], 4)
        for row, p in enumerate(prompts):
            np.testing.assert_array_equal(
                x["token_ids"][row, :p], x0["token_ids"][row, :p]
            )
            assert (x["token_ids"][row, p:] == 5).all()
            # Prompt labels weigh 0; generated labels (all 5) weigh 1.
            assert (w[row, : p - 1] == 0).all() and (w[row, p - 1 : -1] == 1).all()
            assert (y[row, p - 1 : -1] == 5).all() and w[row, -1] == 0


def test_same_seed_same_batches_other_seed_other_samples():
    keras.utils.set_random_seed(0)
    student = gpt2()
    batches = lm_batches()

    def read(seed):
        ds = OnPolicyBatches(batches, student, fraction=0.5, prompt_length=3, seed=seed)
        return [ds[i] for i in range(len(ds))], ds.on_policy_indices()

    (first, chosen), (again, chosen_again) = read(1), read(1)
    np.testing.assert_array_equal(chosen, chosen_again)
    assert len(chosen) > 0
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])
        np.testing.assert_array_equal(a[2], b[2])
    # Read in another order, a batch is the same (seeded by its index).
    ds = OnPolicyBatches(batches, student, fraction=0.5, prompt_length=3, seed=1)
    last = chosen[-1]
    np.testing.assert_array_equal(ds[last][0]["token_ids"], first[last][0]["token_ids"])
    every = [
        OnPolicyBatches(batches, student, fraction=1.0, prompt_length=3, seed=seed)
        for seed in (1, 2)
    ]
    assert any(
        not np.array_equal(every[0][i][0]["token_ids"], every[1][i][0]["token_ids"])
        for i in range(len(batches))
    )


def test_the_distiller_scores_only_the_generated_tokens():
    keras.utils.set_random_seed(0)
    teacher, student = gpt2(2, 16, "teacher"), gpt2(1, 8, "student")
    ds = OnPolicyBatches(lm_batches(n=1), student, fraction=1.0, prompt_length=5)
    x, y, w = ds[0]
    distiller = kd.Distiller(
        teacher, student, kd.losses.LogitsDistillation(2.0), student_loss_weight=0.0
    )
    distiller.compile(keras.optimizers.Adam(1e-3), loss=sparse_ce(), run_eagerly=True)
    result = distiller.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    z_t = ops.convert_to_numpy(teacher(x))
    z_s = ops.convert_to_numpy(student(x))
    expected = (np_token_kd(z_t, z_s, 2.0) * w).sum() / w.sum()
    np.testing.assert_allclose(result["logits_distillation"], expected, rtol=1e-4)
    assert 0 < w.sum() < w.size


def test_refuses_a_student_that_cannot_generate():
    inputs = keras.Input((LENGTH,), dtype="int32")
    plain = keras.Model(inputs, keras.layers.Embedding(VOCAB, VOCAB)(inputs))
    with pytest.raises(ValueError, match="has none; use a keras_hub CausalLM"):
        OnPolicyBatches(lm_batches(), plain, fraction=0.5)
    with pytest.raises(ValueError, match="workers=1"):
        OnPolicyBatches(lm_batches(), gpt2(), fraction=0.5, workers=2)
