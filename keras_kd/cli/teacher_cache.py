"""`--teacher_cache`: distil from the teachers' recorded targets.

The teachers' logits on the student's augmented training stream are
recorded once with `kd.offline.ensure_record` (one crop + flip draw per
epoch, or the plain images when the protocol does not augment) and replayed
by `kd.offline.dataset`; the student then trains from
`kd.offline.RecordedTeacher`s without running a teacher. A record is reused
only when its manifest matches the run. See docs/methods.md §10.

Example (what `recipes/distill.py --teacher_cache=cache/kd` does):

```python
spec = cache_augmentation(cfg, data)
reused = record_teachers(teachers, (x, y), spec, cfg, seed, "cache/kd")
batches = replay_batches(x, y, cfg, "cache/kd")
```
"""

import os

from keras_kd.cli.common import FLAGS
from keras_kd.cli.common import RecipeError


def check_cacheable(terms, soft_labels):
    """Before anything is written: refuses what a record cannot feed."""
    from keras_kd import offline

    if soft_labels:
        raise RecipeError(
            f"--teacher_cache records teacher networks, but --method="
            f"{FLAGS.method} has none (soft labels); drop --teacher_cache."
        )
    if FLAGS.augment_on_device:
        raise RecipeError(
            "--teacher_cache replays the recorded crop + flip in the input "
            "pipeline; drop --augment_on_device."
        )
    live = offline.live_teacher_terms(terms)
    if live:
        raise RecipeError(
            f"--method={FLAGS.method} with --teacher_cache: the terms {live} "
            f"read teacher features or views, which are not recorded (only "
            f"the teachers' logits are); run them with a live teacher (drop "
            f"--teacher_cache) or use logit methods only (e.g. kd, dkd, "
            f"kd+ls, ctkd)."
        )


def cache_augmentation(cfg, data):
    """The protocol's augmentation as a `kd.offline.CropFlip` spec: crop
    (4-pixel padding) + flip, or none; then the run's normalisation. Other
    augmentations (`reffakd_fashion`'s flip + rotation) are not recorded."""
    from keras_kd import offline

    if cfg["augment"] not in (True, False):
        raise RecipeError(
            f"--teacher_cache records crop + flip or unaugmented images, but "
            f"--protocol={cfg['protocol']} augments with {cfg['augment']}; "
            f"drop --teacher_cache or pass --noaugment."
        )
    if cfg["augment"]:
        return offline.CropFlip(padding=4, flip=True, normalize=(data.mean, data.std))
    return offline.CropFlip(padding=0, flip=False, normalize=(data.mean, data.std))


_SHARD_SIZE = 4096


def check_record(path, data, augmentation, cfg, seed, num_teachers):
    """Refuses a record at `path` made from other data, augmentation, seed,
    epochs or storage (before the teachers exist); returns its manifest,
    or None when there is none or `--overwrite_teacher_cache`."""
    from keras_kd.offline import manifest as manifest_lib

    if FLAGS.overwrite_teacher_cache:
        return None
    stored = manifest_lib.read(path)
    if stored is None:
        if os.path.isdir(path) and os.listdir(path):
            raise RecipeError(
                f"--teacher_cache={path} is not empty and holds no record "
                f"(no manifest.json). Choose an empty or new folder."
            )
        return None
    wanted = {
        "teachers": stored.get("teachers"),  # Checked once they exist.
        "dataset": manifest_lib.data_fingerprint(*data),
        "augmentation": augmentation.get_config(),
        "seed": int(seed),
        "epochs": int(cfg["epochs"]),
        "storage": {
            "format": "logits_float16",
            "top_k": None,
            "temperature": None,
            "ensemble": "per_teacher" if num_teachers > 1 else "mean",
            "shard_size": _SHARD_SIZE,
        },
    }
    _refuse(path, stored, wanted)
    return stored


def _refuse(path, stored, wanted):
    from keras_kd.offline import manifest as manifest_lib

    different = manifest_lib.mismatches(stored, wanted)
    if not different:
        return
    values = "".join(
        f"; {key}: recorded {stored.get(key)}, now {wanted[key]}"
        for key in ("seed", "epochs")
        if stored.get(key) != wanted[key]
    )
    raise RecipeError(
        f"--teacher_cache={path} holds a record made with other "
        f"{', '.join(different)} than this run{values}. The record must "
        f"match the teachers' weights, --seed, the student's data "
        f"(--dataset, --train_limit), --augment and --epochs: rerun with "
        f"the flags it was recorded with, choose another --teacher_cache, "
        f"or pass --overwrite_teacher_cache to record it again."
    )


def record_teachers(teachers, data, augmentation, cfg, seed, path):
    """Records the teachers' logits at `path`, or reuses a matching record.

    Several teachers are stored one by one (`per_teacher`), so the replayed
    targets are the live ones (the Distiller weights them). Returns whether
    a complete record was reused. A record made otherwise is refused with
    the fields that differ, unless `--overwrite_teacher_cache`.
    """
    from keras_kd import offline
    from keras_kd.offline.record import describe

    options = {"per_teacher": len(teachers) > 1}
    if FLAGS.overwrite_teacher_cache and os.path.isdir(path):
        print(f"[teacher_cache] deleting {path} (--overwrite_teacher_cache).")
    stored = check_record(path, data, augmentation, cfg, seed, len(teachers))
    if stored is not None:
        try:
            wanted = describe(
                teachers,
                data,
                augmentation,
                cfg["epochs"],
                seed,
                None,
                4.0,
                None,
                options["per_teacher"],
                _SHARD_SIZE,
            )
        except ValueError as e:
            raise RecipeError(f"--teacher_cache={path}: {e}") from None
        _refuse(path, stored, wanted)
    reused = stored is not None and stored["complete"]
    if reused:
        print(
            f"[teacher_cache] reusing the record at {path} ({stored['epochs']} epochs)."
        )
    else:
        what = "resuming" if stored is not None else "recording"
        print(
            f"[teacher_cache] {what} the teachers' logits on "
            f"{cfg['epochs']} epochs of {len(data[0])} images at {path}."
        )
    try:
        offline.ensure_record(
            teachers,
            data,
            augmentation,
            cfg["epochs"],
            path,
            seed,
            overwrite=FLAGS.overwrite_teacher_cache,
            shard_size=_SHARD_SIZE,
            verbose=min(FLAGS.verbose, 1),
            **options,
        )
    except ValueError as e:
        raise RecipeError(f"--teacher_cache={path}: {e}") from None
    return reused


def recorded_teachers(path):
    """The `RecordedTeacher`(s) standing in for the teachers."""
    from keras_kd import offline
    from keras_kd.offline import manifest as manifest_lib

    if manifest_lib.read(path)["storage"]["ensemble"] == "per_teacher":
        return offline.recorded_teachers(path)
    return offline.RecordedTeacher(path)


def replay_batches(x, y, cfg, path):
    """`fit_resumable`'s `batches`: the replay from `first_epoch` on."""
    from keras_kd import offline

    def batches(first_epoch, steps):
        ds = offline.dataset(
            x,
            y,
            cfg["batch_size"],
            record=path,
            epochs=cfg["epochs"],
            drop_remainder=cfg["replicas"] > 1,
            initial_epoch=first_epoch,
        )
        expected = offline.steps_per_epoch(
            len(x), cfg["batch_size"], cfg["replicas"] > 1
        )
        if expected != steps:
            raise RecipeError(
                f"--teacher_cache: the replay has {expected} batches per "
                f"epoch, training expects {steps}; use a --batch_size that "
                f"fits the {len(x)} training images."
            )
        return ds

    return batches
