"""The offline-teacher rows of the GPU suite (docs/methods.md §10).

Three rows on one replayed stream (`kd.offline.ReplayPyDataset`: host
crop+flip with the recorded parameters, the same batches for each row):

- `record`: `kd.offline.record` itself (the teacher's forward pass over one
  epoch of augmented images, float16 logits written to shards);
- `student_replay`: the student alone on the stream (its targets unused);
- `kd_recorded`: Hinton KD from a `kd.offline.RecordedTeacher`.

The target is `kd_recorded >= 0.9 x student_replay`: distilling from a
record costs what training the student alone costs. The recording is timed
without its SHA-256 fingerprints of the teacher's weights and the data
(computed first, outside the timed region, and handed to it: they cost
seconds on GPU-sized data and are no part of recording); each shard's own
checksum, part of writing it, stays in.

Example:

```python
rows = ReplayRows(teacher, make_student, batch_size=256, steps=20,
                  workers=8, folder=tempfile.mkdtemp())
rows.record_row  # {"images_per_s": ..., "bytes_per_example_epoch": ...}
x = np.zeros((20 * 256, 1))  # Only its length counts: 20 steps.
seconds = rows.runner("kd_recorded")(x, None, 256)  # One timed fit.
```
"""

import contextlib
import os

import numpy as np
import throughput_rows as tp

import keras_kd as kd
from keras_kd.offline import manifest as manifest_lib

ROWS = ("student_replay", "kd_recorded")
DESCRIPTIONS = {
    "record": "kd.offline.record: teacher over one augmented epoch",
    "student_replay": "student alone, replayed crop+flip stream",
    "kd_recorded": "kd: logits KD from a recorded teacher (float16)",
}


class ReplayRunner:
    """Times one `fit` over the first `len(x) // batch_size` batches of the
    replayed stream (at most all of them): only the length of the `x` it is
    called with counts, the stream holds its own images."""

    def __init__(self, model, stream):
        self.model = model
        self.stream = stream

    def __call__(self, x, y, batch_size):
        steps = self.stream.steps if x is None else len(x) // batch_size
        start = tp.now()
        self.model.fit(
            self.stream,
            epochs=1,
            steps_per_epoch=min(steps, self.stream.steps),
            verbose=0,
        )
        return tp.now() - start


@contextlib.contextmanager
def precomputed_fingerprints(teacher, x, y):
    """Within the block, `kd.offline.record` reuses the SHA-256
    fingerprints of `teacher`'s weights and of `(x, y)` computed here."""
    weights = manifest_lib.weights_fingerprint(teacher)
    data = manifest_lib.data_fingerprint(x, y)
    saved = manifest_lib.weights_fingerprint, manifest_lib.data_fingerprint
    manifest_lib.weights_fingerprint = lambda model: weights
    manifest_lib.data_fingerprint = lambda x, y: data
    try:
        yield
    finally:
        manifest_lib.weights_fingerprint, manifest_lib.data_fingerprint = saved


class ReplayRows:
    """Records `teacher` once on random uint8 images, then builds the rows.

    `record_row` holds the recording's own images/s (after a warm-up
    recording that compiles the teacher) and its storage in bytes per
    example per epoch."""

    def __init__(
        self, teacher, make_student, batch_size, steps, workers, folder, seed=0
    ):
        shape = tuple(teacher.inputs[0].shape[1:])
        classes = int(teacher.outputs[0].shape[-1])
        rng = np.random.default_rng(seed)
        n = batch_size * steps
        self.x = rng.integers(0, 256, (n, *shape)).astype("uint8")
        self.y = rng.integers(0, classes, n).astype("int64")
        self.make_student, self.seed = make_student, seed
        self.batch_size, self.workers = batch_size, workers
        self.spec = spec = kd.offline.CropFlip(
            padding=4, normalize=kd.data.channel_stats(self.x)
        )
        self.path = os.path.join(folder, "record")
        kd.offline.record(
            teacher,
            (self.x[:batch_size], self.y[:batch_size]),
            spec,
            1,
            os.path.join(folder, "warm"),
            seed,
            batch_size=batch_size,
            verbose=0,
        )
        with precomputed_fingerprints(teacher, self.x, self.y):
            start = tp.now()
            kd.offline.record(
                teacher,
                (self.x, self.y),
                spec,
                1,
                self.path,
                seed,
                batch_size=batch_size,
                verbose=0,
            )
            seconds = tp.now() - start
        stored = sum(
            os.path.getsize(os.path.join(self.path, f))
            for f in os.listdir(self.path)
            if f.endswith(".npz")
        )
        self.record_row = {
            "images_per_s": n / seconds,
            "bytes_per_example_epoch": stored / n,
        }

    def _stream(self, targets):
        """The recorded stream; without targets, the same crops from the
        record's augmentation and seed (images and labels only)."""
        if targets:
            return kd.offline.ReplayPyDataset(
                self.x, self.y, self.batch_size, record=self.path, workers=self.workers
            )
        return kd.offline.ReplayPyDataset(
            self.x,
            self.y,
            self.batch_size,
            augmentation=self.spec,
            seed=self.seed,
            targets=False,
            workers=self.workers,
        )

    def runner(self, config):
        """The runner of `student_replay` or `kd_recorded`."""
        student = self.make_student()
        if config == "student_replay":
            model = student
        elif config == "kd_recorded":
            model = kd.Distiller(
                kd.offline.RecordedTeacher(self.path),
                student,
                **kd.presets.build("kd", None, student),
            )
        else:
            raise ValueError(f"Unknown replay row '{config}'.")
        model.compile(optimizer=tp._optimizer(), loss=tp._ce())
        return ReplayRunner(model, self._stream(config == "kd_recorded"))
