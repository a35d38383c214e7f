"""Stage-aware resume: rerun the same command and a killed run carries on.

`fit_recipe` keeps its state in `run_dir/checkpoints/`:

```
run.json                run id, recipe, batch size, class names, model
                        fingerprint, the attempts (number, start time)
fingerprint.json        the model's input and the data: files of each split
                        with sizes and mtimes, or arrays' sha256; image size,
                        seed, augmentation (`transfer.training.fingerprint`)
initial.npz             the model's weights when the run first started
                        (removed when the run finishes)
<stage>/state.json      stage index, last completed epoch, best metric,
                        epochs done with their logs, the last two backups
                        (with sha256), the run's best weights (with sha256),
                        seconds per attempt, and "done"
<stage>/epoch-0004.npz  model weights and optimizer variables after an epoch
                        (the last two, and the best's; a finished run keeps
                        the last). A head-only stage on cached features
                        (`transfer.training.feature_cache`) stores the
                        head's weights only, over
<stage>/base-0000.npz   the whole model as that stage's `fit` began (its
                        backbone does not change), named with its sha256
                        by each backup that needs it
best.npz                the best weights so far (`transfer.training.best_weights`)
best.weights.h5         the same, for `model.load_weights`, written when a
                        stage ends (not again at the run's end when
                        `best.npz` has not changed since)
```

A rerun resumes only the same run: the recipe, batch size, class names,
model and data (`fingerprint.json`) must match, or it is refused before
anything is written, with the differences listed (`force_resume=True`
resumes anyway and records the new fingerprint).

Every file is written atomically (temporary file, fsync, `os.replace`) at
every epoch end, the files before the state that names them: the epoch
backup, then the best weights, then `state.json`; the previous backup is
kept, so a truncated or corrupt latest backup (its sha256 no longer
matches) falls back to the one before.
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

import json
import logging
import os
import time
import uuid

from transfer._io import read_json
from transfer._io import sha256_file
from transfer._io import write_json
from transfer._io import write_text
from transfer.tensorboard import summaries
from transfer.training import fingerprint as fingerprint_lib
from transfer.training import run_dir as run_dir_lib
from transfer.training.checkpoints import read_checkpoint
from transfer.training.checkpoints import write_checkpoint
from transfer.training.stage_state import StageBackup  # noqa: F401 (public here)
from transfer.training.stage_state import StageState

logger = logging.getLogger(__name__)

CHECKPOINTS = run_dir_lib.CHECKPOINTS


model_fingerprint = fingerprint_lib.model_fingerprint


def _paths(run_dir):
    directory = os.path.join(run_dir, CHECKPOINTS)
    return (os.path.join(directory, "run.json"),
            os.path.join(directory, fingerprint_lib.FILE))


def _stored_fingerprint(run_dir, stored, path, force_resume):
    """The run's `fingerprint.json`; `None` for runs from before it (or
    with `force_resume`, when it is missing or was changed)."""
    expected = stored.get("fingerprint_sha256")
    if expected is None:
        return None
    try:
        digest = sha256_file(path)
    except OSError:
        digest = None
    if digest == expected:
        return read_json(path)
    if force_resume:
        return None
    raise ValueError(
        f"'{path}' is missing or was changed since the run started (its "
        "sha256 no longer matches run.json), so whether the data changed "
        "cannot be checked. Restore the file, pass a new run_dir to start "
        "over, or pass force_resume=True to resume without the check (the "
        f"current fingerprint is then recorded). Received: run_dir={run_dir!r}"
    )


def check_resume(run_dir, settings, fingerprint, *, force_resume=False):
    """Checks, reading only, that a call may train into `run_dir`.

    `fit_recipe` calls it before it takes the run directory's lock (so a
    refused call changes nothing there) and, through `RunState.open`, again
    while holding it.

    Args:
        run_dir: the run directory.
        settings: `transfer.training.fingerprint.run_fingerprint(...)[0]`.
        fingerprint: `run_fingerprint(...)[1]`.
        force_resume: resume despite differences. Defaults to `False`.

    Returns:
        `None` for a new run; else `(stored, differences)`: the run's
        `run.json` and the differences accepted by `force_resume` (empty
        without it).

    Raises:
        ValueError: `run_dir` is finished or not writable, or holds an
            unfinished run with other settings or data (each difference
            listed).
    """
    run_dir_lib.check_run_dir(run_dir)
    run_path, fingerprint_path = _paths(run_dir)
    stored = read_json(run_path)
    if stored is None:
        return None
    stored_fingerprint = _stored_fingerprint(
        run_dir, stored, fingerprint_path, force_resume)
    topics, details = fingerprint_lib.differences(
        stored, stored_fingerprint, settings, fingerprint)
    if details and not force_resume:
        raise fingerprint_lib.mismatch_error(
            run_dir, topics, details, fingerprint_path)
    return stored, details


def _write_fingerprint(path, fingerprint):
    return write_text(path, json.dumps(fingerprint, indent=1) + "\n")


class RunState:
    """What `fit_recipe` knows about a run directory, fresh or resumed.

    Use `RunState.open`, holding the run directory's lock.

    Attributes:
        attempt: this attempt's number, from 1.
        started: `time.perf_counter()` when this attempt opened the run.
    """

    def __init__(self, run_dir, data, resumed):
        self.run_dir = run_dir
        self.directory = os.path.join(run_dir, CHECKPOINTS)
        self.data = data
        self.resumed = resumed
        self.run_id = data["run_id"]
        self.attempt = int(data.get("attempts", 1))
        self.started = time.perf_counter()
        self._stages = {}

    @property
    def initial_path(self):
        return os.path.join(self.directory, "initial.npz")

    @classmethod
    def open(cls, run_dir, model, settings, fingerprint, *,
             force_resume=False):
        """Starts a new run in `run_dir`, or picks up its unfinished one.

        Args:
            run_dir: the run directory.
            model: the model (its weights are the new run's start).
            settings: `transfer.training.fingerprint.run_fingerprint(...)[0]`.
            fingerprint: `run_fingerprint(...)[1]`.
            force_resume: resume despite differences, recording them and
                the new fingerprint. Defaults to `False`.

        Raises:
            ValueError: `run_dir` is finished, holds logs of another run, or
                holds an unfinished run of another recipe, model, batch
                size, class list or data (see `check_resume`).
        """
        checked = check_resume(run_dir, settings, fingerprint,
                               force_resume=force_resume)
        log_dir = run_dir_lib.path(run_dir, run_dir_lib.LOGS)
        path, fingerprint_path = _paths(run_dir)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        if checked is None:
            summaries.check_new_log_dir(log_dir, run_dir)
            data = {"run_id": uuid.uuid4().hex, **settings, "attempts": 1,
                    "attempt_log": [{"attempt": 1, "started": started}]}
            state = cls(run_dir, data, resumed=False)
            if write_checkpoint(state.initial_path, model, optimizer=False) is None:
                raise ValueError(
                    "The model's weights hold NaN or Inf values before "
                    "training. Rebuild the model. Received: non-finite weights"
                )
            data["fingerprint_sha256"] = _write_fingerprint(
                fingerprint_path, fingerprint)
            summaries.claim_log_dir(log_dir, data["run_id"])
            write_json(path, data)  # last: its presence means "started"
            return state
        data, differences = checked
        summaries.check_resumed_log_dir(log_dir, run_dir, data["run_id"])
        attempt = int(data.get("attempts", 1)) + 1
        log = data.get("attempt_log") or [
            {"attempt": number} for number in range(1, attempt)
        ]
        entry = {"attempt": attempt, "started": started}
        if differences:
            logger.warning(
                "Resuming '%s' with force_resume=True although it differs: "
                "%s", run_dir, "; ".join(differences),
            )
            entry["forced_differences"] = differences
        if data.get("fingerprint_sha256") is None and not differences:
            logger.warning(
                "'%s' was started by an older transfer, which recorded no "
                "data fingerprint: the data could not be checked. Recording "
                "it now, for the next resume.", run_dir,
            )
        if differences or data.get("fingerprint_sha256") is None:
            data.update(settings)
            data["fingerprint_sha256"] = _write_fingerprint(
                fingerprint_path, fingerprint)
        data["attempts"] = attempt
        data["attempt_log"] = log + [entry]
        write_json(path, data)
        return cls(run_dir, data, resumed=True)

    def attempt_log(self, states, seconds):
        """The attempts with their seconds: this one's `seconds`, earlier
        ones' up to their last recorded epoch (a killed process says no
        more)."""
        log = []
        for entry in self.data.get("attempt_log") or []:
            number = entry["attempt"]
            if number == self.attempt:
                spent = seconds
            else:
                spent = max(
                    (s.state.get("attempt_seconds", {}).get(str(number), 0.0)
                     for s in states), default=0.0)
            log.append({**entry, "seconds": round(spent, 2),
                        "finished": number == self.attempt})
        return log

    def stage(self, index, stage):
        """The `StageState` of the recipe's `index`-th stage."""
        if index not in self._stages:
            directory = os.path.join(
                self.directory, run_dir_lib.stage_dirname(index, stage.name)
            )
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
