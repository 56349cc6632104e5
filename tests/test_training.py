"""kd.training.fit_resumable: resume, logs, results; TensorBoard optional."""

import csv
import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import training


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (40, 8, 8, 1)).astype("uint8")
    y = (x.reshape(40, -1).mean(axis=1) > 127).astype("int64")
    data = training.Data.from_arrays(x, y, x[:16], y[:16])
    keras.utils.set_random_seed(seed)
    model = kd.models.get("digits_cnn_small", num_classes=2,
                          input_shape=(8, 8, 1))
    return data, model


def test_results_and_csv_log(tmp_path):
    data, model = _setup()
    config = training.TrainConfig(epochs=2, batch_size=16, lr=1e-3)
    result = training.fit_resumable("phase", model, data, data.x, data.y,
                                    config, str(tmp_path), log=None)
    with open(tmp_path / "phase" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert result["last_epoch_test_accuracy"] == accuracies[-1]
    assert result["best_epoch_test_accuracy"] == max(accuracies)
    assert result["images_per_second"] > 0 and result["wall_seconds"] > 0
    # A finished phase is loaded, not retrained.
    again = training.fit_resumable("phase", model, data, data.x, data.y,
                                   config, str(tmp_path), log=None)
    assert again == result


def test_missing_tensorboard_warns_and_keeps_the_csv_log(tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(training, "tensorboard_available", lambda: False)
    data, model = _setup()
    config = training.TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        result = training.fit_resumable("phase", model, data, data.x, data.y,
                                        config, str(tmp_path), log=None)
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
