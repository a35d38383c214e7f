"""The best-weights checkpoint: cheap `.npz` saves, `.weights.h5` at the end.

Covers: transfer.training.checkpoints.
"""

import os

import keras
import numpy as np
import pytest

from transfer.training.checkpoints import BestWeightsCheckpoint


class _Scores(keras.callbacks.Callback):
    """Puts a chosen `score` into the epoch logs and records the weights
    and the checkpoint files after every epoch."""

    def __init__(self, scores, checkpoint):
        super().__init__()
        self.scores = scores
        self.checkpoint = checkpoint
        self.weights = []
        self.h5_seen = []
        self.npz_mtimes = []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
        self.weights.append(self.model.get_weights())

    def record(self):
        self.h5_seen.append(os.path.exists(self.checkpoint.filepath))
        self.npz_mtimes.append(os.path.getmtime(self.checkpoint.array_path)
                               if os.path.exists(self.checkpoint.array_path)
                               else None)


class _After(keras.callbacks.Callback):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        self.scores.record()


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)), rng.normal(size=(16, 2))


def test_keeps_the_best_epoch_and_writes_h5_when_fit_ends(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    checkpoint = BestWeightsCheckpoint(path, monitor="score", mode="max")
    scores = _Scores([0.5, 0.9, 0.7, 0.8], checkpoint)
    model = _model()
    model.fit(*_data(), epochs=4, verbose=0,
              callbacks=[scores, checkpoint, _After(scores)])
    # Saved at the improving epochs 0 and 1 only, as .npz; the .h5 waits
    # for the end of fit.
    assert scores.h5_seen == [False] * 4
    mtimes = scores.npz_mtimes
    assert mtimes[0] <= mtimes[1] == mtimes[2] == mtimes[3]
    assert checkpoint.best == 0.9
    reloaded = _model()
    reloaded.load_weights(path)
    for got, want in zip(reloaded.get_weights(), scores.weights[1], strict=True):
        np.testing.assert_array_equal(got, want)
    # The model keeps its last-epoch weights.
    for got, want in zip(model.get_weights(), scores.weights[3], strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_killed_fit_gets_its_h5_on_the_next_fit(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    first = BestWeightsCheckpoint(path, monitor="score", mode="min")
    scores = _Scores([0.3, 0.4], first)
    model = _model()
    first.set_model(model)
    x, y = _data()
    # A fit killed after its epochs: on_train_end never runs.
    first.on_train_end = lambda logs=None: None
    model.fit(x, y, epochs=2, verbose=0, callbacks=[scores, first])
    assert os.path.exists(first.array_path) and not os.path.exists(path)
    # The rerun beats nothing (threshold 0.3), yet writes the .h5 from the
    # newer .npz when it ends.
    second = BestWeightsCheckpoint(path, monitor="score", mode="min",
                                   initial_value_threshold=0.3)
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[_Scores([0.9], second), second])
    reloaded = _model()
    reloaded.load_weights(path)
    for got, want in zip(reloaded.get_weights(), scores.weights[0], strict=True):
        np.testing.assert_array_equal(got, want)


def test_non_finite_epochs_are_not_saved(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    checkpoint = BestWeightsCheckpoint(path, monitor="score", mode="max")
    model = _model()
    x, y = _data()

    class NanLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["loss"] = float("nan")

    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[_Scores([1.0], checkpoint), NanLoss(), checkpoint])
    assert not os.path.exists(checkpoint.array_path)
    assert not os.path.exists(path) and checkpoint.best is None


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.weights\.h5.*Received: filepath"):
        BestWeightsCheckpoint(str(tmp_path / "best.h5"))
    with pytest.raises(ValueError, match="Received: mode='up'"):
        BestWeightsCheckpoint(str(tmp_path / "b.weights.h5"), mode="up")


def test_an_unreadable_best_file_keeps_the_previous_h5(tmp_path, caplog):
    import logging

    path = str(tmp_path / "best.weights.h5")
    checkpoint = BestWeightsCheckpoint(path, monitor="score", mode="max")
    model = _model()
    x, y = _data()
    scores = _Scores([0.5], checkpoint)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[scores, checkpoint])
    before = open(path, "rb").read()
    # A newer best file that is damaged: no crash, the .h5 stays.
    with open(checkpoint.array_path, "wb") as f:
        f.write(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="transfer"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[_Scores([0.1], checkpoint), checkpoint])
    assert "unreadable" in caplog.text and "best.weights.h5" in caplog.text
    assert open(path, "rb").read() == before
    reloaded = _model()
    reloaded.load_weights(path)
    for got, want in zip(reloaded.get_weights(), scores.weights[0], strict=True):
        np.testing.assert_array_equal(got, want)
