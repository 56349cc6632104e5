"""`distill_lm --method=topk`: the teacher's top-k tokens recorded once
(`kd.offline.record_tokens`), then replayed instead of running it.

The record holds, per real training token, the teacher's `top_k` largest
log-probabilities, their indices and the tail mass; the distilled phase
reads it through `kd.offline.RecordedTeacher` and
`kd.losses.SparseKLDistillation` (DistillKit's `"zero"` handling: the top-k
renormalised, exact at any temperature). A record of another teacher,
corpus or tokenizer is refused; a finished one is reused, an unfinished
one resumed.

Example:

```python
manifest = record(teacher, windows, corpus.fingerprint, "cache", top_k=32)
batches = ReplayEpochs(windows, "cache", corpus.fingerprint, 32, epochs=3,
                       seed=0, teacher=teacher)
```
"""

import keras

import keras_kd as kd
from keras_kd.cli import lm_corpus


def tokenizer_fingerprint():
    """The record's tokenizer: the 256 bytes and the end token."""
    return kd.offline.tokenizer_fingerprint(lm_corpus.VOCABULARY)


def record(teacher, windows, corpus_fingerprint, path, top_k):
    """Records (or reuses) the teacher's top-k over the training windows
    `(windows, mask)`; returns the manifest."""
    x, y, weight = lm_corpus.causal_lm_batch(*windows)
    return kd.offline.record_tokens(
        teacher,
        (x, y, weight),
        path,
        top_k=top_k,
        tokenizer_fingerprint=tokenizer_fingerprint(),
        corpus_fingerprint=corpus_fingerprint,
        batch_size=64,
        verbose=0,
    )


def report(path, top_k):
    """The record as `results.json` describes it."""
    return {"path": path, "top_k": top_k, **kd.offline.record_size(path)}


class ReplayEpochs(keras.utils.PyDataset):
    """The record's replayed batches, one epoch per pass (the batch order
    of `lm_corpus.TokenBatches` with the same seed), from `first_epoch`.

    Example:

    ```python
    batches = ReplayEpochs(windows, "cache", fp, 32, epochs=3, seed=0)
    x, y, sample_weight = batches[0]  # x["inputs"], the record's arrays.
    ```
    """

    def __init__(
        self,
        windows,
        path,
        corpus_fingerprint,
        batch_size,
        epochs,
        seed=0,
        first_epoch=0,
        teacher=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        x, y, weight = lm_corpus.causal_lm_batch(*windows)
        self.replay = kd.offline.TokenReplayPyDataset(
            x,
            y,
            weight,
            batch_size,
            path,
            tokenizer_fingerprint(),
            teacher=teacher,
            corpus_fingerprint=corpus_fingerprint,
            epochs=epochs,
            seed=seed,
            initial_epoch=first_epoch,
        )
        self.epoch = 0  # Epochs read since `first_epoch`.

    def __len__(self):
        return self.replay.steps

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of {len(self)}.")
        return self.replay[self.epoch * self.replay.steps + index]

    def on_epoch_end(self):
        self.epoch += 1
