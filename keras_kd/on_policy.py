"""On-policy batches for causal LMs: the student continues a seeded fraction
of the batches (GKD's `lmbda`), the teacher scores its continuations.

GKD (Agarwal et al., ICLR 2024; TRL's `GKDTrainer`) trains the student on
a mix of the data's sequences and of sequences it samples itself: with
probability λ a batch keeps only its prompts, the student samples the
completions, and the divergence to the teacher is computed over the
generated tokens alone. `OnPolicyBatches` does this on the data side: it
wraps the batches a `kd.Distiller` is fitted on (keras_hub's `CausalLM`
format, `({"token_ids", "padding_mask"}, next tokens, sample_weight)`)
and returns, for the chosen batches, the student's continuation of each
row's prompt with a `(batch, length)` sample weight that is 1 exactly
where the next token (the label) was generated. The Distiller then scores
it with the teacher and averages its terms over those tokens only.

The choice is seeded per epoch and batch index (not per step, as TRL's
`random.random() <= lmbda`), so a resumed run or any worker sees the same
batches chosen; the sampling is seeded by `(seed, epoch, index)`, so the
same weights give the same continuations. The student samples with its
weights at the time the batch is read: `fit` prefetches batches, so for
strictly current weights (and runs that repeat exactly) read the batches
one at a time between steps, e.g. with `train_on_batch`.

Example:

```python
batches = OnPolicyBatches(train_batches, student, fraction=0.5,
                          prompt_length=64, seed=0)
distiller = kd.Distiller(teacher, student,
                         kd.losses.LogitsDistillation(1.0, divergence="jsd"),
                         student_loss_weight=0.0)
distiller.compile(optimizer="adam", loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
for epoch in range(3):
    for i in range(len(batches)):
        distiller.train_on_batch(*batches[i])
    batches.on_epoch_end()
```
"""

import keras
import numpy as np


def chosen_batches(num_batches, fraction, seed=0, epoch=0):
    """Which of an epoch's `num_batches` batches are on-policy: a boolean
    array, `uniform(seed, epoch)[i] < fraction` (so `fraction=0` picks
    none and `fraction=1` all).

    Example:

    ```python
    chosen_batches(100, 0.5, seed=0, epoch=0).mean()  # About 0.5.
    ```
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    draws = np.random.default_rng([int(seed), int(epoch)]).random(num_batches)
    return draws < fraction


def prompt_lengths(padding_mask, prompt_length):
    """Each row's prompt: its first `prompt_length` real tokens (fewer in a
    shorter row, at least one).

    Example:

    ```python
    prompt_lengths(np.array([[1, 1, 1, 0], [1, 0, 0, 0]]), 2)  # [2, 1]
    ```
    """
    real = np.asarray(padding_mask).astype(bool).sum(axis=1)
    return np.maximum(1, np.minimum(real, prompt_length)).astype("int32")


def continuation_batch(token_ids, prompts):
    """The `CausalLM` batch of generated sequences `token_ids (B, T)` whose
    rows kept their first `prompts[b]` tokens: `(x, y, sample_weight)` with
    every position real, labels the next tokens, and weight 1 where the
    label was generated (positions `prompts[b] - 1 .. T - 2`; the last
    position has no label).

    Example:

    ```python
    x, y, w = continuation_batch(np.array([[5, 6, 7, 8]]), np.array([2]))
    # y = [[6, 7, 8, 0]], w = [[0, 1, 1, 0]]
    ```
    """
    token_ids = np.asarray(token_ids)
    batch, length = token_ids.shape
    labels = np.zeros_like(token_ids)
    labels[:, :-1] = token_ids[:, 1:]
    positions = np.arange(length)[None, :]
    weight = (positions >= np.asarray(prompts)[:, None] - 1) & (positions < length - 1)
    x = {"token_ids": token_ids, "padding_mask": np.ones((batch, length), bool)}
    return x, labels, weight.astype("float32")


class OnPolicyBatches(keras.utils.PyDataset):
    """`batches` of which a seeded fraction are the student's continuations.

    Args:
        batches: an indexable (a list, a `keras.utils.PyDataset`) of
            keras_hub `CausalLM` training batches `(x, y, sample_weight)`,
            `x = {"token_ids": (B, T), "padding_mask": (B, T)}` and `y` the
            next tokens. Its `on_epoch_end` is called with this one's.
        student: a keras_hub `CausalLM` without preprocessor (its
            `generate` takes and returns token ids). It is compiled with a
            seeded `keras_hub.samplers.RandomSampler(temperature)` (its
            training compile, if any, is not used by a `kd.Distiller`).
        fraction: λ, the expected share of on-policy batches (GKD's
            `lmbda`; TRL's default 0.5).
        prompt_length: the tokens of each row kept as its prompt (default:
            half the sequence); the student samples the rest of the row
            (TRL's `max_new_tokens`: `T − prompt_length`).
        temperature: the sampling temperature (TRL's `temperature`).
        seed: seeds the choice of batches and the sampling.
        first_epoch: the epoch of the first pass (resumed runs).
        **kwargs: `keras.utils.PyDataset`'s; one worker only (the sampler's
            seed state is shared).

    An on-policy batch is `continuation_batch` of the generated rows: the
    terms and the student loss see weight only on generated labels; give
    the Distiller `student_loss_weight=0` (GKD trains on the divergence
    alone: cross-entropy on the student's own samples teaches it its own
    mistakes). Other batches are returned unchanged.

    Example:

    ```python
    batches = OnPolicyBatches(train_batches, student, fraction=0.5)
    batches.on_policy_indices()  # The batches the student continues.
    ```
    """

    def __init__(
        self,
        batches,
        student,
        fraction=0.5,
        prompt_length=None,
        temperature=1.0,
        seed=0,
        first_epoch=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.workers > 1 or self.use_multiprocessing:
            raise ValueError(
                "OnPolicyBatches samples with the student's shared sampler: "
                "read it from one thread (workers=1, no multiprocessing)."
            )
        chosen_batches(0, fraction)  # Validates the fraction.
        if prompt_length is not None and prompt_length < 1:
            raise ValueError(f"prompt_length must be at least 1, got {prompt_length}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.batches, self.student = batches, student
        self.fraction, self.prompt_length = float(fraction), prompt_length
        self.temperature, self.seed = float(temperature), int(seed)
        self.epoch = int(first_epoch)
        self._chosen = None
        self.sampler = None
        if self.fraction > 0:
            self._install_sampler()

    def _install_sampler(self):
        from keras_hub.samplers import RandomSampler

        if not hasattr(self.student, "generate"):
            raise ValueError(
                f"On-policy batches are sampled with the student's "
                f"`generate`, but '{self.student.name}' has none; use a "
                f"keras_hub CausalLM."
            )
        if getattr(self.student, "preprocessor", None) is not None:
            raise ValueError(
                "The student has a preprocessor; OnPolicyBatches samples "
                "token ids: build it with preprocessor=None."
            )
        self.sampler = RandomSampler(temperature=self.temperature, seed=self.seed)
        self.student.compile(sampler=self.sampler)

    def __len__(self):
        return len(self.batches)

    def on_policy_indices(self, epoch=None):
        """The indices of the on-policy batches of `epoch` (default: the
        current one)."""
        return np.flatnonzero(self._chosen_in(self.epoch if epoch is None else epoch))

    def is_on_policy(self, index, epoch=None):
        """Whether batch `index` of `epoch` (default: current) is sampled."""
        return bool(self._chosen_in(self.epoch if epoch is None else epoch)[index])

    def _chosen_in(self, epoch):
        if self._chosen is None or self._chosen[0] != epoch:
            chosen = chosen_batches(len(self), self.fraction, self.seed, epoch)
            self._chosen = (epoch, chosen)
        return self._chosen[1]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of {len(self)}.")
        batch = self.batches[index]
        if not self.is_on_policy(index):
            return batch
        return self.continue_batch(batch, index)

    def continue_batch(self, batch, index):
        """The student's continuation of `batch`'s prompts (seeded by the
        seed, the epoch and `index`) as a `continuation_batch`."""
        x = batch[0]
        token_ids = np.asarray(x["token_ids"])
        length = token_ids.shape[1]
        keep = self.prompt_length or max(1, length // 2)
        prompts = prompt_lengths(x["padding_mask"], min(keep, length - 1))
        prompt_mask = np.arange(length)[None, :] < prompts[:, None]
        self._reseed(index)
        generated = self.student.generate(
            {"token_ids": token_ids, "padding_mask": prompt_mask},
            stop_token_ids=None,
        )
        return continuation_batch(np.asarray(generated["token_ids"]), prompts)

    def _reseed(self, index):
        """Sets the sampler's seed state from `(seed, epoch, index)`."""
        state = self.sampler.seed_generator.state
        words = np.random.SeedSequence([self.seed, self.epoch, int(index)])
        values = words.generate_state(2) % np.uint32(2**31 - 1)
        state.assign(
            np.asarray(values, dtype=keras.backend.standardize_dtype(state.dtype))
        )

    def on_epoch_end(self):
        self.epoch += 1
        if hasattr(self.batches, "on_epoch_end"):
            self.batches.on_epoch_end()
