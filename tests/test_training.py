"""kd.training.fit_resumable: resume, logs, results; TensorBoard optional."""

import csv
import os
import warnings

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import training
from keras_kd.data import common as data_common


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (40, 8, 8, 1)).astype("uint8")
    y = (x.reshape(40, -1).mean(axis=1) > 127).astype("int64")
    data = training.Data.from_arrays(x, y, x[:16], y[:16])
    keras.utils.set_random_seed(seed)
    model = kd.models.get("digits_cnn_small", num_classes=2, input_shape=(8, 8, 1))
    return data, model


def test_results_and_csv_log(tmp_path, monkeypatch):
    data, model = _setup()
    config = training.TrainConfig(epochs=2, batch_size=16, lr=1e-3)
    loads = iter([(0.25, 0.0, 0.0), (1.75, 0.0, 0.0)])
    monkeypatch.setattr(training.os, "getloadavg", lambda: next(loads))
    result = training.fit_resumable(
        "phase", model, data, data.x, data.y, config, str(tmp_path), log=None
    )
    with open(tmp_path / "phase" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert result["last_epoch_test_accuracy"] == accuracies[-1]
    assert result["best_epoch_test_accuracy"] == max(accuracies)
    assert result["images_per_second"] > 0 and result["wall_seconds"] > 0
    # The 1-minute load before and after training.
    assert result["load_average"] == [0.25, 1.75]
    # A finished phase is loaded, not retrained.
    again = training.fit_resumable(
        "phase", model, data, data.x, data.y, config, str(tmp_path), log=None
    )
    assert again == result


class _Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing catches it."""


def test_kill_right_after_a_checkpoint_keeps_every_log_row(tmp_path, monkeypatch):
    """A run killed just after its second epoch's checkpoint resumes at
    epoch 3/4 with the first two epochs' rows in its log (CI once lost a
    row this way)."""
    save = keras.callbacks.BackupAndRestore._save_model

    def save_then_kill(self):
        save(self)
        if self._current_epoch == 2:
            raise _Killed()

    data, model = _setup()
    config = training.TrainConfig(epochs=4, batch_size=16, lr=1e-3)
    with monkeypatch.context() as patch:
        patch.setattr(keras.callbacks.BackupAndRestore, "_save_model", save_then_kill)
        with pytest.raises(_Killed):
            training.fit_resumable(
                "phase", model, data, data.x, data.y, config, str(tmp_path)
            )
    messages = []
    training.fit_resumable(
        "phase", model, data, data.x, data.y, config, str(tmp_path), log=messages.append
    )
    assert any("resuming at epoch 3/4" in m for m in messages)
    with open(tmp_path / "phase" / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]


def test_every_epoch_trains_exactly_its_own_steps(tmp_path, monkeypatch):
    """40 images in batches of 4 are 10 steps per epoch, run in calls of 5
    (not 8): each epoch ends on its own last batch. In calls of 8 the
    epochs took 16, 14 and 0 steps and Keras warned that the input ran out
    of data."""
    assert data_common.steps_per_call(10) == 5
    assert [data_common.steps_per_call(n) for n in (430, 469, 431, 3)] == [5, 7, 1, 3]
    iterations = []

    class Iterations(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            iterations.append(int(self.model.optimizer.iterations))

    callbacks = training._callbacks
    monkeypatch.setattr(
        training, "_callbacks", lambda *a: callbacks(*a) + [Iterations()]
    )
    data, model = _setup()
    config = training.TrainConfig(epochs=3, batch_size=4, lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.fit_resumable(
            "phase", model, data, data.x, data.y, config, str(tmp_path), log=None
        )
    assert iterations == [10, 20, 30]
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_missing_tensorboard_warns_and_keeps_the_csv_log(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "tensorboard_available", lambda: False)
    data, model = _setup()
    config = training.TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        result = training.fit_resumable(
            "phase", model, data, data.x, data.y, config, str(tmp_path), log=None
        )
    assert os.path.exists(tmp_path / "phase" / "log.csv")
    assert not os.path.exists(tmp_path / "phase" / "tensorboard")
    assert np.isfinite(result["last_epoch_test_accuracy"])


def test_cli_checks_optional_writers_before_training(monkeypatch, capsys):
    from keras_kd.cli import common

    monkeypatch.setattr(training, "tensorboard_available", lambda: False)
    monkeypatch.setattr(common, "TENSORBOARD", [True])
    common.check_optional_writers()
    assert common.TENSORBOARD == [False]
    assert "pip install tensorboard" in capsys.readouterr().err


def test_example_index_supplied_when_a_term_reads_it(tmp_path):
    """A CRD Distiller trains from the default pipeline, which adds each
    batch's dataset positions: image i is filled with the value i, so the
    index of every batch row can be read back from its pixels.

    TensorFlow only: the pipeline is host code; CRD's memory update on
    every backend is tested against NumPy in test_contrastive_representation.
    """
    x = np.repeat(np.arange(48, dtype="uint8"), 64).reshape(48, 8, 8, 1)
    y = np.arange(48, dtype="int64") % 2
    ds = training._indexed_batches(
        x, y, 16, 3, 2, 1, seed=0, augment=False, normalize=None
    )
    batches = list(ds.as_numpy_iterator())
    # Whole batches only (one compiled step); epoch 1 only (first_epoch=1).
    assert len(batches) == 3
    seen = []
    for inputs, labels in batches:
        index = inputs["example_index"]
        np.testing.assert_allclose(
            inputs["inputs"][:, 0, 0, 0] * 255.0, index, atol=1e-4
        )
        np.testing.assert_array_equal(labels, index % 2)
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(48))
    assert seen == np.random.default_rng([0, 1]).permutation(48).tolist()

    data = training.Data.from_arrays(x, y, x[:16], y[:16])
    keras.utils.set_random_seed(0)
    teacher = kd.models.get("digits_cnn_small", num_classes=2, input_shape=(8, 8, 1))
    student = kd.models.get("digits_cnn_small", num_classes=2, input_shape=(8, 8, 1))
    crd = kd.losses.ContrastiveRepresentation(
        num_data=48, feat_dim=8, num_negatives=8, name="crd"
    )
    distiller = kd.Distiller(
        teacher, student, [crd], student_loss_weight=1.0, weighting="additive"
    )
    assert training.side_inputs(distiller) == ["example_index"]
    assert training.side_inputs(student) == []
    before = np.array(crd.memory_student)
    config = training.TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    result = training.fit_resumable(
        "crd", distiller, data, x, y, config, str(tmp_path), log=None, tensorboard=False
    )
    assert np.isfinite(result["final_losses"]["crd"])
    # Every image's memory row was updated with its own index.
    changed = np.any(np.array(crd.memory_student) != before, axis=1)
    assert changed.all()


def test_unsupplied_side_input_is_refused(tmp_path):
    data, model = _setup()
    teacher = kd.models.get("digits_cnn_small", num_classes=2, input_shape=(8, 8, 1))
    crd = kd.losses.ContrastiveRepresentation(
        num_data=40, feat_dim=8, num_negatives=8, negatives="given"
    )
    distiller = kd.Distiller(
        teacher, model, [crd], student_loss_weight=1.0, weighting="additive"
    )
    config = training.TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    with pytest.raises(ValueError, match=r"\['contrast_index'\]"):
        training.fit_resumable(
            "crd", distiller, data, data.x, data.y, config, str(tmp_path), log=None
        )


def learning_rates(optimizer, steps):
    """The optimizer's learning rate at each of `steps` (its iterations)."""
    rates = []
    for step in steps:
        optimizer.iterations.assign(step)
        rates.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    return np.array(rates)


@pytest.mark.parametrize("factor", [None, 0.2])
def test_step_schedule_multiplies_by_lr_decay_factor(factor):
    """×`lr_decay_factor` at each decay epoch (0.1 unless set)."""
    extra = {} if factor is None else {"lr_decay_factor": factor}
    config = training.TrainConfig(
        epochs=3, batch_size=1, lr=1.0, optimizer="sgd", lr_decay_epochs=[1, 2], **extra
    )
    gamma = factor or 0.1
    # Every batch of an epoch, its first included (iterations 4 and 8).
    got = learning_rates(training.make_optimizer(config, steps=4), range(12))
    expected = [1.0] * 4 + [gamma] * 4 + [gamma**2] * 4
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    cfg = {"epochs": 3, "batch_size": 1, "lr_decay_factor": 0.2, "ignored": 1}
    assert training.TrainConfig.from_dict(cfg, lr=0.1).lr_decay_factor == 0.2
