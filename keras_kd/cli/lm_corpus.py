"""The `distill_lm` corpus: the standard library's own Python source, as
bytes.

Offline and on every machine with Python: the `.py` files under
`sysconfig.get_paths()["stdlib"]` (not `site-packages`, `test`, `tests`,
`__pycache__` or the generated help text of `pydoc_data`), each assigned
to train (90 %), validation (5 %) or held-out test (5 %) by the SHA-256
of its relative path, read in the order of that hash until a split's
token budget is reached. Tokens are keras_hub `ByteTokenizer` bytes
(0..255) and `END_TOKEN` (256) after each file, which also pads the last
window. The fingerprint hashes the files
and the tokens of every split; another Python version gives another
corpus (and fingerprint).

Example:

```python
corpus = load_corpus({"train": 300_000, "validation": 40_000,
                      "test": 40_000})
windows, mask = pack(corpus.tokens["train"], sequence_length=128)
train = TokenBatches(windows, mask, batch_size=32, seed=0)
```
"""

import dataclasses
import hashlib
import os
import sys
import sysconfig

import keras
import numpy as np

from keras_kd.data.common import epoch_order
from keras_kd.data.common import steps_per_epoch

END_TOKEN = 256
VOCABULARY_SIZE = 257
# The tokens' names, for fingerprints: the 256 bytes, then the end token.
VOCABULARY = [f"<0x{i:02X}>" for i in range(256)] + ["<end>"]
SPLITS = ("train", "validation", "test")
# `pydoc_data` holds `topics.py`, 0.75 MB of generated help text: not code.
_SKIPPED_DIRS = {
    "site-packages",
    "dist-packages",
    "__pycache__",
    "test",
    "tests",
    "pydoc_data",
}


@dataclasses.dataclass
class Corpus:
    """Token streams per split and what they were read from."""

    tokens: dict
    files: dict
    root: str
    fingerprint: str

    def info(self):
        """The corpus as recorded in `results.json`."""
        return {
            "source": "python standard library (.py files)",
            "root": self.root,
            "python": sys.version.split()[0],
            "fingerprint": self.fingerprint,
            "tokenizer": "keras_hub ByteTokenizer (bytes 0..255) + END 256",
            "tokens": {k: int(len(v)) for k, v in self.tokens.items()},
            "files": {k: len(v) for k, v in self.files.items()},
        }


def stdlib_files(root=None):
    """Sorted `.py` paths (relative, `/`-separated) under the standard
    library `root`, without third-party packages, tests and caches."""
    root = root or sysconfig.get_paths()["stdlib"]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        rel = os.path.relpath(folder, root)
        for name in files:
            if name.endswith(".py"):
                path = name if rel == "." else os.path.join(rel, name)
                found.append(path.replace(os.sep, "/"))
    return sorted(found)


def _digest(path):
    return hashlib.sha256(path.encode()).hexdigest()


def file_split(path):
    """`"test"`, `"validation"` or `"train"` for a relative path (1/20,
    1/20 and 18/20 of files, by the SHA-256 of the path)."""
    bucket = int(_digest(path)[:8], 16) % 20
    return SPLITS[2] if bucket == 0 else SPLITS[1] if bucket == 1 else SPLITS[0]


def tokenize(text):
    """The UTF-8 bytes of `text` by keras_hub's `ByteTokenizer` (int32)."""
    from keras_hub.tokenizers import ByteTokenizer

    tokenizer = ByteTokenizer(lowercase=False)
    return np.asarray(keras.ops.convert_to_numpy(tokenizer(text)), "int32")


def detokenize(token_ids):
    """Text of byte tokens (`END_TOKEN` and others above 255 dropped)."""
    ids = [int(t) for t in np.asarray(token_ids).ravel() if 0 <= t < 256]
    return bytes(ids).decode("utf-8", errors="replace")


def split_budgets(max_train_tokens, max_eval_tokens, teacher_train_tokens=None):
    """`load_corpus`'s budgets: the training split holds the teacher's
    tokens when it reads more than the students.

    Example:

    ```python
    corpus = load_corpus(split_budgets(200_000, 20_000, 1_000_000))
    ```
    """
    return {
        "train": max(max_train_tokens, teacher_train_tokens or 0),
        "validation": max_eval_tokens,
        "test": max_eval_tokens,
    }


def load_corpus(max_tokens, root=None):
    """The splits' token streams, each cut at `max_tokens[split]` tokens.

    Raises a ValueError when the library holds too few for a split.
    """
    root = root or sysconfig.get_paths()["stdlib"]
    paths = sorted(stdlib_files(root), key=_digest)
    tokens, files = {}, {}
    fingerprint = hashlib.sha256(sys.version.split()[0].encode())
    for split in SPLITS:
        budget = int(max_tokens[split])
        parts, used, count = [], [], 0
        for path in (p for p in paths if file_split(p) == split):
            if count >= budget:
                break
            with open(os.path.join(root, path), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            part = np.append(tokenize(text), np.int32(END_TOKEN))
            parts.append(part)
            used.append(path)
            count += len(part)
        if count < budget:
            raise ValueError(
                f"The standard library under {root} holds {count} "
                f"{split} tokens, fewer than the {budget} asked for."
            )
        tokens[split] = np.concatenate(parts)[:budget].astype("int32")
        files[split] = used
        fingerprint.update(split.encode() + "\0".join(used).encode())
        fingerprint.update(tokens[split].tobytes())
    return Corpus(tokens, files, root, fingerprint.hexdigest())


def pack(stream, sequence_length):
    """Non-overlapping windows of `sequence_length + 1` tokens (inputs and
    their next tokens) and their padding masks; the last window is padded
    with `END_TOKEN` (mask False).

    Example:

    ```python
    windows, mask = pack(np.arange(10), 4)  # (2, 5) each
    ```
    """
    width = sequence_length + 1
    count = -(-len(stream) // width)
    windows = np.full((count * width,), END_TOKEN, "int32")
    windows[: len(stream)] = stream
    mask = np.arange(count * width) < len(stream)
    return windows.reshape(count, width), mask.reshape(count, width)


def split_windows(corpus, sequence_length, student_train_tokens):
    """`pack`ed windows of every split, plus `"teacher_train"`: the whole
    training stream, of which `"train"` (the student's) packs the first
    `student_train_tokens`.

    Example:

    ```python
    windows = split_windows(corpus, 128, student_train_tokens=200_000)
    ```
    """
    windows = {s: pack(t, sequence_length) for s, t in corpus.tokens.items()}
    windows["teacher_train"] = windows["train"]
    student = corpus.tokens["train"][:student_train_tokens]
    windows["train"] = pack(student, sequence_length)
    return windows


def causal_lm_batch(windows, mask):
    """keras_hub's `CausalLM` batch of windows: `({"token_ids",
    "padding_mask"}, next tokens, sample weight)`."""
    x = {"token_ids": windows[:, :-1], "padding_mask": mask[:, :-1]}
    return x, windows[:, 1:], mask[:, 1:].astype("float32")


class TokenBatches(keras.utils.PyDataset):
    """`causal_lm_batch`es of windows in an order that depends only on the
    seed and the epoch (`kd.data.epoch_order`); `shuffle=False` keeps
    their order (evaluation). The last batch may be partial.

    Example:

    ```python
    train = TokenBatches(windows, mask, batch_size=32, seed=0)
    x, y, sample_weight = train[0]
    ```
    """

    def __init__(
        self, windows, mask, batch_size, seed=0, first_epoch=0, shuffle=True, **kwargs
    ):
        super().__init__(**kwargs)
        if len(windows) == 0:
            raise ValueError("No windows to batch.")
        self.windows, self.mask = windows, mask
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.epoch, self.shuffle = int(first_epoch), shuffle

    def __len__(self):
        return steps_per_epoch(len(self.windows), self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch {index} of {len(self)}.")
        order = epoch_order(len(self.windows), self.epoch, self.seed, self.shuffle)
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        return causal_lm_batch(self.windows[rows], self.mask[rows])

    def on_epoch_end(self):
        self.epoch += 1


def prompt_inputs(text, sequence_length):
    """`generate` inputs of a text prompt: its bytes, then room to fill up
    to `sequence_length` (a model without preprocessor generates until the
    end of `token_ids`).

    Example:

    ```python
    out = student.generate(prompt_inputs("def ", 32), stop_token_ids=None)
    detokenize(out["token_ids"][0])
    ```
    """
    ids = tokenize(text)[: sequence_length - 1]
    token_ids = np.full((1, sequence_length), END_TOKEN, "int32")
    token_ids[0, : len(ids)] = ids
    mask = np.arange(sequence_length)[None, :] < len(ids)
    return {"token_ids": token_ids, "padding_mask": mask}
