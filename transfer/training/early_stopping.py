"""Early stopping per stage: `Stage(patience=..., min_delta=...)`.

`keras.callbacks.EarlyStopping(restore_best_weights=True)` keeps the best
weights in memory only, and its counters start again at every `fit` call:
a run killed mid-stage and resumed would forget them. `StageEarlyStopping`
derives its counters from the stage's recorded history, keeps the stage's
best weights in `checkpoints/<stage>/best.npz` (atomic), and at the end of
the stage puts them back into the model, so the next stage starts from
them.
"""

import logging
import os

import keras
import numpy as np

from transfer.training.checkpoints import read_checkpoint
from transfer.training.checkpoints import write_checkpoint

logger = logging.getLogger(__name__)

BEST_FILE = "best.npz"


class StageEarlyStopping(keras.callbacks.Callback):
    """Stops a stage when `monitor` stops improving; ends it on the best
    epoch's weights.

    Args:
        monitor: the metric, e.g. `"val_loss"`.
        mode: `"min"` or `"max"`.
        patience: epochs without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        directory: the stage's checkpoint directory (for `best.npz`).
        history: the stage's history so far (`{metric: [values]}` over
            `epochs`), for a resumed stage. Defaults to `None`.
        epochs: the epochs of `history`. Defaults to `None`.

    Example:

    >>> stopper = StageEarlyStopping("loss", "min", 1, 0.0, "stage")
    >>> stopper.patience
    1
    """

    def __init__(self, monitor, mode, patience, min_delta, directory,
                 history=None, epochs=None):
        super().__init__()
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.directory = directory
        self.history = dict(history or {})
        self.epochs = list(epochs or [])

    @property
    def best_path(self):
        return os.path.join(self.directory, BEST_FILE)

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, logs=None):
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        # A resumed stage: replay the epochs it already ran.
        for epoch, value in zip(
            self.epochs, self.history.get(self.monitor, []), strict=False
        ):
            self._update(epoch, value, save=False)
        if self.best_epoch is not None and not os.path.exists(self.best_path):
            # Its weights are gone (a kill before the first save): the
            # counters still hold; the best file starts again from here.
            self.best_epoch = None

    def _update(self, epoch, value, save):
        if value is None or not np.isfinite(value):
            self.wait += 1
            return
        if self._improved(value):
            self.best = float(value)
            self.best_epoch = epoch
            self.wait = 0
            if save:
                write_checkpoint(self.best_path, self.model, optimizer=False)
        else:
            self.wait += 1

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"Early stopping watches `{self.monitor}`, which this "
                f"epoch did not log (it logged {sorted(logs or {})}). "
                f"Received: monitor={self.monitor!r}"
            )
        self._update(epoch, float(value), save=True)
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is None:
            return
        if self.best_epoch is not None and os.path.exists(self.best_path):
            read_checkpoint(self.best_path, self.model, optimizer=False)
        logger.info(
            "Early stopping: %s did not improve by more than %g for %d "
            "epochs; stopped after epoch %d, continuing from the best epoch "
            "%s (%s = %s).", self.monitor, self.min_delta, self.patience,
            self.stopped_epoch + 1,
            None if self.best_epoch is None else self.best_epoch + 1,
            self.monitor, self.best,
        )

    def summary(self):
        """The manifest record: what stopped, where, and the best epoch."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "stopped_after_epoch": self.stopped_epoch,
            "best_epoch": self.best_epoch,
            "best": self.best,
        }
