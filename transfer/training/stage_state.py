"""One stage's backups and progress: `StageState`, and `StageBackup`, the
callback that records every epoch into it (see `transfer.training.resume`
for the run directory's layout and the order files are written in).
"""

import logging
import os
import re
import time

import keras

from transfer._io import read_json
from transfer._io import sha256_file
from transfer._io import write_json
from transfer.training import run_dir as run_dir_lib
from transfer.training.checkpoints import finite_logs
from transfer.training.checkpoints import read_checkpoint
from transfer.training.checkpoints import write_checkpoint

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"^(epoch|base)-(\d+)\.npz$")
_KEEP = 2


class StageState:
    """Backups and progress of one stage in `checkpoints/<stage>/`.

    Args:
        directory: the stage's checkpoint directory.
        run_id: the run's id; a state file of another run is ignored.
        index: the stage's position in the recipe, from 0.
        name: the stage's name.
    """

    def __init__(self, directory, run_id, index, name):
        self.directory = directory
        self.run_id = run_id
        self.index = index
        self.name = name
        self.path = os.path.join(directory, "state.json")
        state = read_json(self.path)
        if state is not None and (
            state.get("run_id") != run_id or state.get("name") != name
        ):
            state = None
        self.state = state or {
            "run_id": run_id,
            "name": name,
            "index": index,
            "done": False,
            "last_epoch": None,
            "best": None,
            "epochs": [],
            "history": {},
            "backups": [],
            "seconds": 0.0,
            "record": None,
            "best_weights": None,
            "attempt_seconds": {},
        }
        self.non_finite = None
        # Set by `back_up_only`: the weights an epoch backup holds, and the
        # full file it completes.
        self.partial = None

    @property
    def done(self):
        return bool(self.state["done"])

    @property
    def last_epoch(self):
        epochs = self.state["epochs"]
        return epochs[-1] if epochs else None

    def _save(self):
        write_json(self.path, self.state)

    def record_epoch(self, model, epoch, logs, seconds, *, best=None,
                     attempt=None):
        """Backs up the model after `epoch`, unless its loss or weights are
        not finite; writes the best weights when the epoch beats them; then
        updates and saves the state, which names both files with their
        sha256 (see `transfer.training.best_weights`).

        Args:
            model: the model.
            epoch: the epoch just ended.
            logs: its logs.
            seconds: how long it took.
            best: the run's `transfer.training.best_weights.RunBest`, or
                `None`. Defaults to `None`.
            attempt: `(attempt number, seconds since it started)`, or
                `None`. Defaults to `None`.
        """
        self.non_finite = None
        if not finite_logs(logs):
            self.non_finite = {"epoch": epoch, "loss": logs.get("loss"),
                               "what": "loss"}
            return False
        name = f"epoch-{epoch:04d}.npz"
        path = os.path.join(self.directory, name)
        partial = self.partial or {}
        digest = write_checkpoint(path, model, optimizer=True,
                                  weights=partial.get("weights"))
        if digest is None:
            self.non_finite = {"epoch": epoch, "loss": logs.get("loss"),
                               "what": "weights"}
            return False
        entry = {"epoch": epoch, "file": name, "sha256": digest}
        if partial:
            entry.update(base=partial["base"],
                         base_sha256=partial["base_sha256"])
        record = None
        if best is not None:
            value = best.improves(logs)
            if value is not None:
                base = partial.get("base")
                record = best.save(
                    model, value, epoch=epoch, stage=self.name,
                    backup=os.path.relpath(path, best.checkpoints),
                    backup_sha256=digest,
                    base=None if base is None else os.path.relpath(
                        os.path.join(self.directory, base), best.checkpoints),
                    base_sha256=partial.get("base_sha256"),
                )
        state = self.state
        state["epochs"] = [e for e in state["epochs"] if e < epoch] + [epoch]
        count = len(state["epochs"])
        for key, value in (logs or {}).items():
            values = state["history"].setdefault(key, [])
            state["history"][key] = values[: count - 1] + [float(value)]
        backups = [b for b in state["backups"] if b["epoch"] < epoch]
        state["backups"] = [entry] + backups[: _KEEP - 1]
        state["seconds"] = round(state["seconds"] + seconds, 2)
        state["last_epoch"] = epoch
        monitor = next(
            (m for m in ("val_accuracy", "accuracy") if m in state["history"]),
            None,
        )
        state["best"] = (
            {"monitor": monitor, "value": max(state["history"][monitor])}
            if monitor else None
        )
        if best is not None:
            state["best_weights"] = record or best.record
        if attempt is not None:
            number, elapsed = attempt
            state.setdefault("attempt_seconds", {})[str(number)] = round(
                elapsed, 2)
        self._save()  # only now: the files it names exist and match
        if record is not None:
            best.accept(record)
        self._prune(best)
        return True

    def back_up_only(self, model, weights, first_epoch, *, source=None):
        """From now on, backs up only the weights at positions `weights` of
        `model.weights` (and the optimizer) at every epoch end: the rest
        must not change (a head-only stage on cached features, where the
        backbone does not even run). The whole model is written once now,
        to `base-<first_epoch>.npz`, which each backup names with its
        sha256; restoring reads both. Best weights of such epochs are
        written to `best.npz` once, when the stage ends (see
        `transfer.training.best_weights`).

        Args:
            model: the model.
            weights: positions in `model.weights` of the weights that
                change.
            first_epoch: the first epoch of the `fit` about to run.
            source: a `write_checkpoint` file (without optimizer) that
                holds the model's weights now, such as `initial.npz` at the
                start of the first stage: the base is a hard link to it
                (written only where the file system has none). Defaults to
                `None`.

        Returns:
            Whether it applies: `False` when the model's weights are not
            finite (every backup then stays whole).
        """
        name = f"base-{first_epoch:04d}.npz"
        path = os.path.join(self.directory, name)
        os.makedirs(self.directory, exist_ok=True)
        digest = None if source is None else _linked(source, path)
        if digest is None:
            digest = write_checkpoint(path, model, optimizer=False)
        if digest is None:
            self.partial = None
            return False
        self.partial = {"weights": list(weights), "base": name,
                        "base_sha256": digest}
        return True

    def _prune(self, best=None):
        """Deletes this stage's `epoch-*.npz` and `base-*.npz` files no
        longer listed (nor holding the run's best weights)."""
        keep = {b["file"] for b in self.state["backups"]}
        keep.update(b["base"] for b in self.state["backups"] if b.get("base"))
        if self.partial:
            keep.add(self.partial["base"])
        if best is not None:
            keep.update(best.files_in(self.directory))
        for name in os.listdir(self.directory):
            if _EPOCH_FILE.match(name) and name not in keep:
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError as e:
                    logger.warning("Could not remove old backup %s: %s", name, e)

    def restore(self, model, *, optimizer=True):
        """Loads the newest good backup into `model`.

        A backup whose sha256 does not match (truncated, corrupt) or that
        does not load is skipped for the one before it.

        Returns:
            The epoch restored, or `None` when there is no good backup.
        """
        for backup in self.state["backups"]:
            path = os.path.join(self.directory, backup["file"])
            base = backup.get("base")
            base = None if base is None else os.path.join(self.directory, base)
            try:
                if sha256_file(path) != backup["sha256"]:
                    raise ValueError("its sha256 does not match")
                if base is not None and (
                    sha256_file(base) != backup["base_sha256"]
                ):
                    raise ValueError(f"the sha256 of its base '{base}' does "
                                     "not match")
                read_checkpoint(path, model, optimizer=optimizer, base=base)
            except (OSError, ValueError) as e:
                logger.warning(
                    "Stage '%s': backup '%s' is unusable (%s); trying the "
                    "one before.", self.name, path, e,
                )
                continue
            return backup["epoch"]
        return None

    def history(self, model=None):
        """The stage's epochs so far, as a `keras.callbacks.History`."""
        history = keras.callbacks.History()
        history.epoch = list(self.state["epochs"])
        history.history = {k: list(v) for k, v in self.state["history"].items()}
        if model is not None:
            history.set_model(model)
        return history

    def keep_latest_only(self):
        self.state["backups"] = self.state["backups"][:1]
        self._save()
        self._prune()

    def finish_early(self, model, summary):
        """Records that the stage stopped early: the model holds the
        stage's best weights, backed up (with its optimizer) as the
        stage's newest backup, so a later stage or a resumed run starts
        from them."""
        name = "final.npz"
        digest = write_checkpoint(
            os.path.join(self.directory, name), model, optimizer=True)
        if digest is not None:
            backups = [b for b in self.state["backups"] if b["file"] != name]
            self.state["backups"] = [
                {"epoch": self.last_epoch, "file": name, "sha256": digest}
            ] + backups[: _KEEP - 1]
        self.state["early_stop"] = summary
        self._save()

    def mark_done(self, record):
        self.state["done"] = True
        self.state["record"] = record
        self._save()

    @property
    def record(self):
        return self.state["record"]


def _linked(source, path):
    """Makes `path` a hard link to `source`, atomically; its sha256, or
    `None` when that fails (no such file, no hard links)."""
    tmp = os.path.join(os.path.dirname(path),
                       f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.link(source, tmp)
        os.replace(tmp, path)
        return sha256_file(path)
    except OSError as e:
        logger.debug("Cannot link '%s' to '%s' (%s); writing it.", path,
                     source, e)
        if os.path.lexists(tmp):
            os.remove(tmp)
        return None


class StageBackup(keras.callbacks.Callback):
    """Backs up model and optimizer at every epoch end (see `StageState`).

    `fit_recipe` puts it first among a stage's callbacks. An epoch whose
    loss or weights are NaN or Inf is not backed up. With `best`, it also
    keeps the run's best weights (`best.npz` at every improving epoch,
    before the state that names it, or once at the end of a head-only
    stage, see `StageState.back_up_only`; `best.weights.h5` when `fit`
    ends).

    Args:
        stage_state: the `StageState` to record into.
        best: the run's `transfer.training.best_weights.RunBest`, or
            `None`. Defaults to `None`.
        run: the `RunState`, for the attempt's seconds and the run
            directory. Defaults to `None`.
    """

    def __init__(self, stage_state, *, best=None, run=None):
        super().__init__()
        self.stage_state = stage_state
        self.best = best
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        seconds = now - getattr(self, "_started", now)
        attempt = None
        if self.run is not None:
            attempt = (self.run.attempt, now - self.run.started)
        if not self.stage_state.record_epoch(
            self.model, epoch, logs or {}, seconds, best=self.best,
            attempt=attempt,
        ):
            # The loss can stay finite while the weights are not (on JAX,
            # NaN inputs pass ReLU as 0), which TerminateOnNaN misses.
            self.model.stop_training = True
            logger.warning(
                "Epoch %d of stage '%s': loss or weights are NaN or Inf "
                "(loss %s); no backup written, the last good one stays.",
                epoch, self.stage_state.name, (logs or {}).get("loss"),
            )

    def on_train_end(self, logs=None):
        if self.best is not None and self.run is not None:
            self.best.export_h5(self.model, run_dir_lib.path(
                self.run.run_dir, run_dir_lib.BEST_WEIGHTS))
