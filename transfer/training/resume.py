"""Stage-aware resume: rerun the same command and a killed run carries on.

`fit_recipe` keeps its state in `run_dir/checkpoints/`:

```
run.json                run id, recipe, batch size, class names, model
                        fingerprint, number of attempts
initial.npz             the model's weights when the run first started
                        (removed when the run finishes)
<stage>/state.json      stage index, last completed epoch, best metric,
                        epochs done with their logs, the last two backups
                        (with sha256), and "done"
<stage>/epoch-0004.npz  model weights and optimizer variables after an epoch
                        (the last two; a finished run keeps the last)
best.npz                the best weights so far (BestWeightsCheckpoint)
best.weights.h5         the same, for `model.load_weights`, written when a
                        stage ends
```

Every file is written atomically (temporary file, fsync, `os.replace`) at
every epoch end; the previous backup is kept, so a truncated or corrupt
latest backup (its sha256 no longer matches) falls back to the one before.
On a rerun, finished stages are skipped, the interrupted stage restores its
latest good backup (weights and optimizer state) and continues from the
epoch after it, and later stages run as usual. Only files this module
names are ever deleted (older `epoch-*.npz` backups of a stage); nothing
else in the run directory is touched.

Why not `keras.callbacks.BackupAndRestore` (Keras 3.15)? It backs up one
`fit` call, and `fit_recipe` makes one `fit` call per stage with a freshly
compiled optimizer:

- Its `backup_dir` holds one state with no stage identity. Shared by the
  stages, a rerun after a kill in stage 2 restores stage 2's weights and
  epoch into stage 1, whose fresh optimizer has other variables ("Skipping
  variable loading for optimizer"), or the wrong ones when the counts match.
- It deletes `backup_dir` when a `fit` ends (`delete_checkpoint=True`), so
  with one directory per stage a finished stage has no backup and a rerun
  retrains it from scratch.
- The epoch it restores is written to `model._initial_epoch`, which Keras
  never resets: with `delete_checkpoint=False` and one directory per stage,
  a rerun after a kill in stage 1 runs stage 2 from stage 1's epoch (one
  extra epoch here), shifting its schedule and TensorBoard steps.
- A finished stage's `fit` still runs (for zero epochs): its callbacks run
  again and its history comes back empty.
- It overwrites its backup in place and keeps no previous one by default;
  a kill mid-write leaves a file it cannot load. It also backs up NaN
  weights.

`tests/test_reliability.py::test_backup_and_restore_alone_is_not_enough`
shows the first three on every backend.
"""

import hashlib
import json
import logging
import os
import re
import time
import uuid

import keras

from transfer._io import read_json
from transfer._io import sha256_file
from transfer._io import write_json
from transfer.tensorboard import summaries
from transfer.training import run_dir as run_dir_lib
from transfer.training.checkpoints import finite_logs
from transfer.training.checkpoints import read_checkpoint
from transfer.training.checkpoints import write_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINTS = run_dir_lib.CHECKPOINTS
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.npz$")
_KEEP = 2


def model_fingerprint(model):
    """A hash of the model's weight shapes, to tell another model apart."""
    shapes = [list(map(int, w.shape)) for w in model.weights]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


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
        }
        self.non_finite = None

    @property
    def done(self):
        return bool(self.state["done"])

    @property
    def last_epoch(self):
        epochs = self.state["epochs"]
        return epochs[-1] if epochs else None

    def _save(self):
        write_json(self.path, self.state)

    def record_epoch(self, model, epoch, logs, seconds):
        """Backs up the model after `epoch`, unless its loss or weights are
        not finite; then updates and saves the state."""
        self.non_finite = None
        if not finite_logs(logs):
            self.non_finite = {"epoch": epoch, "loss": logs.get("loss"),
                               "what": "loss"}
            return False
        name = f"epoch-{epoch:04d}.npz"
        path = os.path.join(self.directory, name)
        digest = write_checkpoint(path, model, optimizer=True)
        if digest is None:
            self.non_finite = {"epoch": epoch, "loss": logs.get("loss"),
                               "what": "weights"}
            return False
        state = self.state
        state["epochs"] = [e for e in state["epochs"] if e < epoch] + [epoch]
        count = len(state["epochs"])
        for key, value in (logs or {}).items():
            values = state["history"].setdefault(key, [])
            state["history"][key] = values[: count - 1] + [float(value)]
        backups = [b for b in state["backups"] if b["epoch"] < epoch]
        state["backups"] = [
            {"epoch": epoch, "file": name, "sha256": digest}
        ] + backups[: _KEEP - 1]
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
        self._save()
        self._prune()
        return True

    def _prune(self):
        """Deletes this stage's `epoch-*.npz` files no longer listed."""
        keep = {b["file"] for b in self.state["backups"]}
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
            try:
                if sha256_file(path) != backup["sha256"]:
                    raise ValueError("its sha256 does not match")
                read_checkpoint(path, model, optimizer=optimizer)
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


class StageBackup(keras.callbacks.Callback):
    """Backs up model and optimizer at every epoch end (see `StageState`).

    `fit_recipe` puts it first among a stage's callbacks. An epoch whose
    loss or weights are NaN or Inf is not backed up.

    Args:
        stage_state: the `StageState` to record into.
    """

    def __init__(self, stage_state):
        super().__init__()
        self.stage_state = stage_state

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - getattr(self, "_started", time.perf_counter())
        if not self.stage_state.record_epoch(self.model, epoch, logs or {}, seconds):
            # The loss can stay finite while the weights are not (on JAX,
            # NaN inputs pass ReLU as 0), which TerminateOnNaN misses.
            self.model.stop_training = True
            logger.warning(
                "Epoch %d of stage '%s': loss or weights are NaN or Inf "
                "(loss %s); no backup written, the last good one stays.",
                epoch, self.stage_state.name, (logs or {}).get("loss"),
            )


class RunState:
    """What `fit_recipe` knows about a run directory, fresh or resumed.

    Use `RunState.open`, holding the run directory's lock.
    """

    def __init__(self, run_dir, data, resumed):
        self.run_dir = run_dir
        self.directory = os.path.join(run_dir, CHECKPOINTS)
        self.data = data
        self.resumed = resumed
        self.run_id = data["run_id"]
        self._stages = {}

    @property
    def initial_path(self):
        return os.path.join(self.directory, "initial.npz")

    @classmethod
    def open(cls, run_dir, model, recipe, *, batch_size, class_names):
        """Starts a new run in `run_dir`, or picks up its unfinished one.

        Raises:
            ValueError: `run_dir` is finished, holds logs of another run, or
                holds an unfinished run of another recipe, model, batch size
                or class list.
        """
        run_dir_lib.check_run_dir(run_dir)
        log_dir = run_dir_lib.path(run_dir, run_dir_lib.LOGS)
        path = os.path.join(run_dir, CHECKPOINTS, "run.json")
        expected = {
            "recipe": recipe.get_config(),
            "batch_size": batch_size,
            "class_names": list(class_names) if class_names is not None else None,
            "model": model_fingerprint(model),
        }
        data = read_json(path)
        if data is None:
            summaries.check_new_log_dir(log_dir, run_dir)
            data = {"run_id": uuid.uuid4().hex, **expected, "attempts": 1}
            os.makedirs(os.path.dirname(path), exist_ok=True)
            state = cls(run_dir, data, resumed=False)
            if write_checkpoint(state.initial_path, model, optimizer=False) is None:
                raise ValueError(
                    "The model's weights hold NaN or Inf values before "
                    "training. Rebuild the model. Received: non-finite weights"
                )
            summaries.claim_log_dir(log_dir, data["run_id"])
            write_json(path, data)
            return state
        differences = [
            key for key, value in expected.items()
            if json.loads(json.dumps(data.get(key))) != json.loads(json.dumps(value))
        ]
        if differences:
            raise ValueError(
                f"'{run_dir}' holds an unfinished run with another "
                f"{', '.join(differences)} (it was started with "
                f"{ {k: data.get(k) for k in differences} }). Rerun the same "
                "command to resume it, or pass a new run_dir. Received: "
                f"{ {k: expected[k] for k in differences} }"
            )
        summaries.check_resumed_log_dir(log_dir, run_dir, data["run_id"])
        data["attempts"] = int(data.get("attempts", 1)) + 1
        write_json(path, data)
        return cls(run_dir, data, resumed=True)

    def stage(self, index, stage):
        """The `StageState` of the recipe's `index`-th stage."""
        if index not in self._stages:
            directory = os.path.join(
                self.directory, run_dir_lib.stage_dirname(index, stage.name)
            )
            os.makedirs(directory, exist_ok=True)
            self._stages[index] = StageState(
                directory, self.run_id, index, stage.name
            )
        return self._stages[index]

    def restore_initial(self, model):
        """Loads the weights the run started with (no optimizer state)."""
        read_checkpoint(self.initial_path, model, optimizer=False)

    def finish(self):
        """Trims a finished run's backups: once `manifest.json` exists the
        run is never resumed, so each stage keeps only its final backup (its
        weights at the end of the stage), and `initial.npz` goes."""
        for state in self._stages.values():
            state.keep_latest_only()
        if os.path.exists(self.initial_path):
            os.remove(self.initial_path)


def stage_histories(run_dir):
    """`(histories, stage_names)` of a finished run, from its stage states.

    Returns `([], [])` when the run has no manifest or no stage state.
    """
    manifest = read_json(run_dir_lib.path(run_dir, run_dir_lib.MANIFEST))
    if manifest is None:
        return [], []
    histories, names = [], []
    for index, stage in enumerate((manifest.get("recipe") or {}).get("stages", [])):
        directory = os.path.join(
            run_dir, CHECKPOINTS, run_dir_lib.stage_dirname(index, stage["name"])
        )
        state = StageState(directory, None, index, stage["name"])
        saved = read_json(state.path)
        if not saved:
            continue
        state.state = saved
        histories.append(state.history())
        names.append(stage["name"])
    return histories, names
