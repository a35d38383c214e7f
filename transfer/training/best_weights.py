"""The run's best weights across stages, kept so no failed write loses them.

`fit_recipe` keeps the best weights by the monitored metric in
`checkpoints/best.npz` (and `best.weights.h5`, for `model.load_weights`).
At every epoch end `transfer.training.resume.StageState.record_epoch`
writes, in this order:

1. the epoch backup `<stage>/epoch-NNNN.npz`, then its sha256;
2. when the epoch beats the best so far, `best.npz`, then its sha256;
3. `<stage>/state.json`, which names both files with their sha256 and the
   best value (the record below).

A write that fails (a full disk, a kill) leaves the state naming files that
exist and match. `best.npz` may then be newer than the state (step 3
failed): its sha256 no longer matches the record, and `verify` rebuilds it
from the epoch backup the record names, which holds the same weights (the
stage keeps that backup while it is the best). The value to beat is always
the recorded one, never one whose file was not written.

A head-only stage on cached features backs up only the head's weights over
a base file of the whole model (`StageState.back_up_only`); step 2 then
writes nothing: the record names the backup and its base, `sha256` is
`None`, and `verify` writes `best.npz` from them once, when the stage ends
or a resumed run starts, so an epoch pays for the head's weights only.

A record: `{"monitor", "mode", "value", "epoch", "stage", "backup",
"backup_sha256", "sha256"}`, plus `"base"` and `"base_sha256"` for a
head-only backup (paths relative to `checkpoints/`).
"""

import logging
import math
import os

import numpy as np

from transfer._io import atomic_write
from transfer._io import sha256_file
from transfer.training.checkpoints import checkpoint_weights
from transfer.training.checkpoints import export_weights_h5
from transfer.training.checkpoints import write_checkpoint

logger = logging.getLogger(__name__)

ARRAYS = "best.npz"


class RunBest:
    """The best weights of a run so far, and the record that names them.

    Args:
        checkpoints: the run's `checkpoints/` directory.
        monitor: the metric in the epoch logs.
        mode: `"max"` or `"min"`.
        record: the last recorded best (from a stage state), or `None`.
    """

    def __init__(self, checkpoints, monitor, mode, record=None):
        self.checkpoints = checkpoints
        self.monitor = monitor
        self.mode = mode
        self.record = record
        self._warned = False
        # (best.npz sha256, .h5 path, .h5 sha256) of the last export.
        self._exported = None

    @property
    def path(self):
        return os.path.join(self.checkpoints, ARRAYS)

    @property
    def value(self):
        return None if self.record is None else self.record["value"]

    def use(self, monitor, mode):
        """Sets the metric of the stage about to train. A record kept by
        another metric cannot be compared: the stage's first finite value
        replaces it (the stage's own monitor decides from then on)."""
        self.monitor, self.mode = monitor, mode
        self._warned = False

    def improves(self, logs):
        """The monitored value of `logs` when it beats the record, else
        `None`."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            if not self._warned:
                logger.warning(
                    "Best weights: '%s' is not in the epoch logs (%s); none "
                    "saved.", self.monitor, ", ".join(sorted(logs or {})))
                self._warned = True
            return None
        value = float(value)
        if not math.isfinite(value):
            return None
        best = self.value
        if self.record is not None and (
            self.record.get("monitor"), self.record.get("mode")
        ) != (self.monitor, self.mode):
            best = None
        if best is not None and not (
            value < best if self.mode == "min" else value > best
        ):
            return None
        return value

    def save(self, model, value, *, epoch, stage, backup, backup_sha256,
             base=None, base_sha256=None):
        """Writes `best.npz` from `model`; returns the record to store.

        The caller stores the record (in the stage's state) only after this
        returns, and then calls `accept`. With `base` (the epoch's `backup`
        holds some weights only, see `StageState.back_up_only`), nothing is
        written now: the record names the backup and its base, with
        `sha256` `None`, and `verify` writes `best.npz` from them when the
        stage ends (or a resumed run starts).
        """
        record = {
            "monitor": self.monitor, "mode": self.mode, "value": value,
            "epoch": int(epoch), "stage": stage, "backup": backup,
            "backup_sha256": backup_sha256,
        }
        if base is not None:
            return {**record, "base": base, "base_sha256": base_sha256,
                    "sha256": None}
        digest = write_checkpoint(self.path, model, optimizer=False)
        if digest is None:
            return self.record
        return {**record, "sha256": digest}

    def accept(self, record):
        self.record = record

    def files_in(self, directory):
        """The names of the recorded best's backup (and its base) that are
        in `directory`."""
        if self.record is None:
            return set()
        names = set()
        for key in ("backup", "base"):
            if self.record.get(key) is None:
                continue
            path = os.path.join(self.checkpoints, self.record[key])
            if (os.path.dirname(os.path.abspath(path))
                    == os.path.abspath(directory)):
                names.add(os.path.basename(path))
        return names

    def verify(self):
        """Makes `best.npz` match the record, rebuilding it from the backup
        the record names when it does not.

        Returns:
            `True` when `best.npz` holds the recorded best; `False` when the
            record is gone (the next improving epoch writes a new best).
        """
        if self.record is None:
            return False
        pending = self.record["sha256"] is None  # see `save` with `base`
        if not pending and _sha256(self.path) == self.record["sha256"]:
            return True
        backup = os.path.join(self.checkpoints, self.record["backup"])
        base = self.record.get("base")
        base = None if base is None else os.path.join(self.checkpoints, base)
        if _sha256(backup) != self.record["backup_sha256"] or (
            base is not None and _sha256(base) != self.record["base_sha256"]
        ):
            logger.warning(
                "'%s' does not hold the recorded best weights (epoch %d, "
                "%s %.4g), and neither does their backup '%s'; the best "
                "weights start over from the next epoch.", self.path,
                self.record["epoch"], self.monitor, self.record["value"],
                backup,
            )
            self.record = None
            return False
        arrays = checkpoint_weights(backup, base)
        size = sum(a.nbytes for a in arrays.values())
        atomic_write(self.path, lambda f: np.savez(f, **arrays), size=size)
        if pending:
            logger.debug("Wrote '%s' from '%s' (epoch %d).", self.path,
                         backup, self.record["epoch"])
        else:
            logger.warning(
                "'%s' was newer than the run's state (a write failed after "
                "it); rebuilt it from '%s' (epoch %d).", self.path, backup,
                self.record["epoch"],
            )
        self.record = dict(self.record, sha256=sha256_file(self.path))
        return True

    def export_h5(self, model, h5_path):
        """Writes `h5_path` (`.weights.h5`) from `best.npz`; `None` when
        there is no best, else the file's sha256.

        A stage's end and the run's end both ask for it: when `h5_path`
        still holds the file this object last wrote from the same
        `best.npz` (both sha256 match), it is not written again (Keras's
        `save_weights` walks every layer in Python, 0.4 s for
        EfficientNet-Lite0)."""
        if not self.verify():
            return None
        source = self.record["sha256"]
        if self._exported is not None and self._exported[:2] == (
            source, os.path.abspath(h5_path)
        ) and _sha256(h5_path) == self._exported[2]:
            return self._exported[2]
        export_weights_h5(model, self.path, h5_path)
        digest = sha256_file(h5_path)
        self._exported = (source, os.path.abspath(h5_path), digest)
        return digest

    def summary(self):
        """The record as the manifest shows it (`best`), or `None`."""
        if self.record is None:
            return None
        return {k: self.record[k]
                for k in ("monitor", "mode", "value", "epoch", "stage")}


def _sha256(path):
    try:
        return sha256_file(path)
    except OSError:
        return None


def latest_record(states):
    """The best record of the last stage state that has recorded one."""
    for state in reversed(states):
        if state.state.get("best_weights"):
            return state.state["best_weights"]
    return None
