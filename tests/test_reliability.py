"""Fault injection, in process: crashes, truncated backups, NaN, bad labels,
locks, head mismatches and failed saves, on every backend.

Crashes here are exceptions raised from a callback at a chosen epoch; the
SIGKILL tests (real processes) are in test_sigkill.py.

Covers: transfer.training (resume, checkpoints, lock, run_dir), transfer.data.labels.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import transfer
from transfer.training import checkpoints
from transfer.training import lock
from transfer.training import resume

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

RECIPE = [
    transfer.Stage("head", 2, 1e-2, 0),
    transfer.Stage("top", 3, 5e-3, 1),
]


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises at the start of `epoch`, as a kill between epochs would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash(f"crash at epoch {epoch}")


class Epochs(keras.callbacks.Callback):
    """Records every epoch that starts."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _model():
    keras.utils.set_random_seed(7)
    return transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)


def _data():
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    # A fixed batch order, so an interrupted run can match an uninterrupted
    # one exactly (array data is reshuffled with the global seed each run).
    return transfer.make_dataset(x, y, image_size=32, batch_size=8)


def _fit(run_dir, callbacks=(), recipe=RECIPE, model=None, **kwargs):
    return transfer.fit_recipe(
        model or _model(), recipe, _data(), run_dir=str(run_dir),
        callbacks=list(callbacks), verbose=0, **kwargs,
    )


def _final(histories):
    return {k: v[-1] for k, v in histories[-1].history.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of RECIPE: its final metrics and predictions."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    model = _model()
    histories = _fit(run_dir, model=model)
    x, _ = transfer.synthetic_images(16, 32, 2, seed=0)
    return {
        "metrics": _final(histories),
        "histories": [h.history for h in histories],
        "predictions": model.predict(x, verbose=0),
    }


@pytest.mark.all_backends
@pytest.mark.parametrize("crash_epoch", [1, 3])
def test_resume_after_crash_matches_uninterrupted_run(
    tmp_path, reference, crash_epoch
):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(Crash):
        _fit(run_dir, [CrashAt(crash_epoch)])
    assert not (run_dir / "manifest.json").exists()

    epochs = Epochs()
    histories = _fit(run_dir, [epochs])
    # Stage 'head' is epochs 0-1, 'top' 2-4: only the unfinished epochs ran.
    assert epochs.seen == list(range(crash_epoch, 5))
    assert [h.epoch for h in histories] == [[0, 1], [2, 3, 4]]
    for got, want in zip(histories, reference["histories"], strict=True):
        assert set(got.history) == set(want)
        for key in want:
            np.testing.assert_allclose(got.history[key], want[key], atol=1e-4)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["attempts"] == 2
    assert (run_dir / "notes.txt").read_text() == "mine"
    reloaded = transfer.load_model(run_dir / "model.keras")
    x, _ = transfer.synthetic_images(16, 32, 2, seed=0)
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), reference["predictions"], atol=1e-4
    )


@pytest.mark.all_backends
def test_resume_restores_the_optimizer_state(tmp_path):
    run_dir = tmp_path / "run"
    saved = {}

    class Snapshot(CrashAt):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == self.epoch:
                saved["optimizer"] = [
                    keras.ops.convert_to_numpy(v)
                    for v in self.model.optimizer.variables
                ]
            super().on_epoch_begin(epoch, logs)

    with pytest.raises(Crash):
        _fit(run_dir, [Snapshot(3)])
    restored = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored.setdefault("optimizer", [
                keras.ops.convert_to_numpy(v)
                for v in self.model.optimizer.variables
            ])

    _fit(run_dir, [Capture()])
    assert len(saved["optimizer"]) == len(restored["optimizer"]) > 2
    for a, b in zip(saved["optimizer"], restored["optimizer"], strict=True):
        np.testing.assert_array_equal(a, b)
    # Adam's step count came back: one epoch of two batches in stage 'top'.
    assert int(restored["optimizer"][0]) == 2


def test_truncated_latest_backup_falls_back_to_the_previous(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run_dir, [CrashAt(4)])
    stage_dir = run_dir / "checkpoints" / "top"
    state = json.loads((stage_dir / "state.json").read_text())
    assert [b["epoch"] for b in state["backups"]] == [3, 2]
    assert state["last_epoch"] == 3 and state["index"] == 1
    assert state["best"]["monitor"] == "accuracy"
    assert state["best"]["value"] == max(state["history"]["accuracy"])
    assert sorted(os.listdir(stage_dir)) == [
        "epoch-0002.npz", "epoch-0003.npz", "state.json"
    ]
    latest = stage_dir / "epoch-0003.npz"
    latest.write_bytes(latest.read_bytes()[:100])
    epochs = Epochs()
    with caplog.at_level(logging.WARNING, logger="transfer"):
        histories = _fit(run_dir, [epochs])
    assert epochs.seen == [3, 4]
    assert "unusable" in caplog.text and "epoch-0003.npz" in caplog.text
    assert histories[1].epoch == [2, 3, 4]


def test_finished_stage_is_never_retrained(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run_dir, [CrashAt(2)])  # stage 'head' done, 'top' not begun
    head = json.loads((run_dir / "checkpoints" / "head" / "state.json").read_text())
    assert head["done"] and head["epochs"] == [0, 1]
    epochs = Epochs()
    _fit(run_dir, [epochs])
    assert epochs.seen == [2, 3, 4]


def test_rerun_of_a_finished_run_or_another_recipe_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run_dir, [CrashAt(1)])
    other = [transfer.Stage("head", 2, 1e-3, 0), transfer.Stage("top", 3, 5e-3, 1)]
    with pytest.raises(ValueError, match="another recipe.*Received: "):
        _fit(run_dir, recipe=other)
    with pytest.raises(ValueError, match="another batch_size"):
        _fit(run_dir, batch_size=4)
    _fit(run_dir)
    with pytest.raises(ValueError, match="already holds a finished run"):
        _fit(run_dir)


def test_backup_and_restore_alone_is_not_enough(tmp_path):
    """Keras's BackupAndRestore across fit_recipe-like stages (one fit per
    stage, recompiled with a fresh optimizer); see transfer/resume.py."""
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)

    def run(backup_dir, per_stage, delete, crash_epoch=None):
        model = _model()
        epochs = Epochs()
        callbacks = [epochs] + ([CrashAt(crash_epoch)] if crash_epoch else [])
        offset = 0
        caught = []
        for stage in RECIPE:
            transfer.set_trainable_blocks(model, stage.trainable_blocks)
            model.compile(
                keras.optimizers.Adam(stage.learning_rate),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            directory = str(backup_dir / stage.name) if per_stage else str(backup_dir)
            backup = keras.callbacks.BackupAndRestore(
                directory, delete_checkpoint=delete
            )
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                model.fit(x, y, batch_size=8, initial_epoch=offset,
                          epochs=offset + stage.epochs,
                          callbacks=[backup] + callbacks, verbose=0)
            caught += [str(m.message) for m in w]
            offset += stage.epochs
        return epochs.seen, caught

    def crash_then_rerun(name, crash_epoch, **kwargs):
        with pytest.raises(Crash):
            run(tmp_path / name, crash_epoch=crash_epoch, **kwargs)
        return run(tmp_path / name, **kwargs)

    # One backup_dir for both stages: stage 1's fit restores stage 2's
    # backup, into an optimizer with other variables.
    _, caught = crash_then_rerun("shared", 3, per_stage=False, delete=True)
    assert any("Skipping variable loading for optimizer" in m for m in caught)
    # One backup_dir per stage, deleted when each fit ends (the default):
    # the finished stage 1 is retrained from scratch.
    seen, _ = crash_then_rerun("deleted", 3, per_stage=True, delete=True)
    assert seen[:2] == [0, 1]
    # Kept per stage: the epoch restored in stage 1 leaks into stage 2
    # (model._initial_epoch is never reset), which runs an extra epoch.
    seen, _ = crash_then_rerun("kept", 1, per_stage=True, delete=False)
    assert seen == [1, 1, 2, 3, 4]
    # fit_recipe in the same situations: only the unfinished epochs run.
    for crash_epoch in (1, 3):
        run_dir = tmp_path / f"recipe{crash_epoch}"
        with pytest.raises(Crash):
            _fit(run_dir, [CrashAt(crash_epoch)])
        epochs = Epochs()
        _fit(run_dir, [epochs])
        assert epochs.seen == list(range(crash_epoch, 5))


class _Poisoned(keras.utils.PyDataset):
    """Two batches per epoch; NaN images once `poisoned` is set."""

    def __init__(self):
        super().__init__()
        self.x, self.y = transfer.synthetic_images(16, 32, 2, seed=0)
        self.poisoned = False

    def __len__(self):
        return 2

    def __getitem__(self, index):
        x = self.x[index * 8:(index + 1) * 8].copy()
        if self.poisoned:
            x[:] = np.nan
        return x, self.y[index * 8:(index + 1) * 8]


class PoisonAt(keras.callbacks.Callback):
    def __init__(self, data, epoch):
        super().__init__()
        self.data = data
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.data.poisoned = epoch >= self.epoch


@pytest.mark.all_backends
def test_nan_loss_stops_the_run_and_keeps_the_last_good_weights(tmp_path):
    run_dir = tmp_path / "run"
    model = _model()
    with pytest.raises(transfer.NonFiniteLossError, match=r"Stage 'top' stopped at epoch 3: the (training loss became nan|weights became NaN or Inf).*Received: loss="):
        data = _Poisoned()
        transfer.fit_recipe(model, RECIPE, data, run_dir=str(run_dir),
                            callbacks=[PoisonAt(data, 3)], verbose=0)
    assert not transfer.saving.non_finite_weights(model)
    assert not (run_dir / "model.keras").exists()
    assert not (run_dir / "manifest.json").exists()
    state = json.loads((run_dir / "checkpoints" / "top" / "state.json").read_text())
    assert state["epochs"] == [2] and not state["done"]
    for stage in ("head", "top"):
        for name in os.listdir(run_dir / "checkpoints" / stage):
            if name.endswith(".npz"):
                with np.load(run_dir / "checkpoints" / stage / name) as arrays:
                    assert all(np.all(np.isfinite(arrays[k])) for k in arrays.files)
    # The best-weights checkpoint holds finite weights too.
    best = _model()
    best.load_weights(run_dir / "checkpoints" / "best.weights.h5")
    assert not transfer.saving.non_finite_weights(best)


def test_nan_loss_exits_non_zero(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import conftest, numpy as np, transfer
        x, y = transfer.synthetic_images(16, 32, 2)
        # One NaN pixel: the loss is NaN at the first step, whatever the
        # (unseeded) random init. A 1e38 learning rate made this process
        # exit 0 once in a clean-clone run (six runs by hand all raised):
        # a huge but finite loss is possible, e.g. with every ReLU dead and
        # only the head's bias in the logits.
        x[3, 5, 5, 0] = np.nan
        model = transfer.build_classifier("tiny_cnn", 2, weights=None)
        transfer.fit_recipe(model, [transfer.Stage("h", 3, 1e-3)], (x, y),
                            run_dir={str(tmp_path / "run")!r}, verbose=0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "NonFiniteLossError" in result.stderr
    assert "became" in result.stderr and "Received: loss=" in result.stderr


def test_save_model_never_replaces_a_good_file_with_a_bad_one(
    tiny_model, tiny_data, tmp_path, monkeypatch
):
    path = str(tmp_path / "model.keras")
    transfer.save_model(tiny_model, path)
    good = open(path, "rb").read()
    variable = tiny_model.get_layer("predictions").kernel
    original = keras.ops.convert_to_numpy(variable)
    variable.assign(np.full(original.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="NaN or Inf.*Received: "):
        transfer.save_model(tiny_model, path)
    variable.assign(original)

    def full_disk(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        transfer.save_model(tiny_model, path)
    assert open(path, "rb").read() == good
    assert os.listdir(tmp_path) == ["model.keras"]


def test_failed_backup_keeps_the_previous_one(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_savez = np.savez
    calls = {"n": 0}

    def savez(file, **arrays):
        if any(key.startswith("o") for key in arrays):
            calls["n"] += 1  # per-epoch backups (with the optimizer) only
        if calls["n"] == 4:  # epochs 0, 1 and 2, then 3 fails
            file.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(file, **arrays)

    monkeypatch.setattr(checkpoints.np, "savez", savez)
    with pytest.raises(OSError, match="No space left"):
        _fit(run_dir)
    monkeypatch.setattr(checkpoints.np, "savez", real_savez)
    top = run_dir / "checkpoints" / "top"
    assert sorted(os.listdir(top)) == ["epoch-0002.npz", "state.json"]
    epochs = Epochs()
    _fit(run_dir, [epochs])
    assert epochs.seen == [3, 4]


def test_corrupt_model_files(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="No model file"):
        transfer.load_model(tmp_path / "missing.keras")
    text = tmp_path / "text.keras"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="Corrupt model file"):
        transfer.load_model(text)
    path = tmp_path / "good.keras"
    transfer.save_model(tiny_model, str(path))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Corrupt model file"):
        transfer.load_model(truncated)


HOLDER = textwrap.dedent(f"""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("lock", {lock.__file__!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.RunDirLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold_lock(run_dir):
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_run_on_a_run_dir_refuses_naming_the_first(tmp_path, tiny_model, tiny_data):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _hold_lock(run_dir)
    try:
        with pytest.raises(transfer.RunDirInUseError, match=rf"in use by process {holder.pid}\b.*Received: run_dir="):
            transfer.fit_recipe(tiny_model, RECIPE[:1], tiny_data,
                                run_dir=str(run_dir), verbose=0)
        assert not (run_dir / "checkpoints").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind
        holder.wait()
    assert json.loads((run_dir / lock.LOCK_NAME).read_text())["pid"] == holder.pid
    transfer.fit_recipe(tiny_model, RECIPE[:1], tiny_data, run_dir=str(run_dir),
                        verbose=0)
    assert (run_dir / "manifest.json").exists()
    assert (run_dir / lock.LOCK_NAME).read_text() == ""


def test_lock_without_flock_checks_the_pid(tmp_path, monkeypatch, caplog):
    """Where fcntl is missing, the recorded PID's liveness decides."""
    monkeypatch.setattr(lock, "fcntl", None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / lock.LOCK_NAME
        record = {"pid": sleeper.pid, "host": lock.socket.gethostname(),
                  "start": lock._start_time(sleeper.pid), "since": "now"}
        path.write_text(json.dumps(record))
        with pytest.raises(transfer.RunDirInUseError, match=str(sleeper.pid)):
            lock.RunDirLock(str(tmp_path)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING, logger="transfer"):
        with lock.RunDirLock(str(tmp_path)):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"from process {sleeper.pid}, which is no longer running" in caplog.text
    # A recycled PID (same number, another start time) is not the holder.
    assert not lock.process_alive(os.getpid(), start_time=-1)
    assert lock.process_alive(os.getpid(), lock._start_time(os.getpid()))


@pytest.mark.all_backends
def test_labels_out_of_range_fail_on_every_kind_of_data(tmp_path):
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    recipe = [transfer.Stage("h", 2, 1e-3)]

    def fit(data, name, **kwargs):
        transfer.fit_recipe(_model(), recipe, data, run_dir=str(tmp_path / name),
                            batch_size=8, verbose=0, **kwargs)

    later = y.copy()
    later[12] = 2  # in the second batch: only seen during training
    first = y.copy()
    first[0] = -1
    with pytest.raises(ValueError, match=r"Training labels must be in \[0, 2\).*Received: "):
        fit((x, later), "arrays")
    with pytest.raises(ValueError, match=r"Training labels must be in \[0, 2\).*first: -1"):
        fit(transfer.make_dataset(x, first, image_size=32, batch_size=8), "tf_first")
    with pytest.raises(ValueError, match=r"Training labels must be in \[0, 2\).*during training.*Received: a batch with labels in \[0, 2\]"):
        fit(transfer.make_dataset(x, later, image_size=32, batch_size=8), "tf_later")

    class Seq(keras.utils.PyDataset):
        def __init__(self, labels):
            super().__init__()
            self.labels = labels

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], self.labels[i * 8:(i + 1) * 8]

    with pytest.raises(ValueError, match=r"Training labels must be in \[0, 2\).*first: 2"):
        fit(Seq(later), "pydataset")
    with pytest.raises(ValueError, match=r"Validation labels must be in \[0, 2\)"):
        fit((x, y), "validation",
            validation_data=transfer.make_dataset(x, later, image_size=32, batch_size=8))
    # One-hot labels are not class indices and pass.
    assert transfer.data.labels.check_labels(
        (x, np.eye(2)[y]), 2, "Training") is not None


def test_head_classes_must_match_unless_replaced(tmp_path):
    run_dir = tmp_path / "run"
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    recipe = [transfer.Stage("h", 1, 1e-3)]
    transfer.fit_recipe(_model(), recipe, (x, y), run_dir=str(run_dir),
                        class_names=["cat", "dog"], batch_size=8, verbose=0)
    model = transfer.load_model(run_dir / "model.keras")
    assert model.transfer_metadata["class_names"] == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\].*\['dog', 'cat'\].*replace_head.*Received: class_names="):
        transfer.fit_recipe(model, recipe, (x, y), run_dir=str(tmp_path / "b"),
                            class_names=["dog", "cat"], verbose=0)
    three = (np.concatenate([x, x[:4]]), np.concatenate([y, [2, 2, 2, 2]]))
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\].*\['ant', 'bee', 'cow'\]"):
        transfer.fit_recipe(model, recipe, three, run_dir=str(tmp_path / "c"),
                            class_names=["ant", "bee", "cow"], verbose=0)
    new = transfer.replace_head(model, 3)
    assert new.output_shape == (None, 3)
    np.testing.assert_array_equal(  # the backbone is shared, not copied
        keras.ops.convert_to_numpy(new.get_layer("tiny_cnn").weights[0]),
        keras.ops.convert_to_numpy(model.get_layer("tiny_cnn").weights[0]),
    )
    transfer.fit_recipe(new, recipe, three, run_dir=str(tmp_path / "d"),
                        class_names=["ant", "bee", "cow"], batch_size=8, verbose=0)
    # Same classes: fine-tuning the loaded model goes ahead.
    transfer.fit_recipe(model, recipe, (x, y), run_dir=str(tmp_path / "e"),
                        class_names=["cat", "dog"], batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="Received: num_classes=1"):
        transfer.replace_head(model, 1)


@pytest.mark.all_backends
def test_same_seed_same_metrics(tmp_path):
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)

    def run(name):
        keras.utils.set_random_seed(3)
        model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.2)
        histories = transfer.fit_recipe(model, RECIPE, (x, y), batch_size=8,
                                        run_dir=str(tmp_path / name), verbose=0)
        return [h.history for h in histories]

    assert run("a") == run("b")


def test_stage_names_that_are_not_file_names(tmp_path):
    recipe = [transfer.Stage("../../escape", 1, 1e-3), transfer.Stage("top/1", 1, 1e-3, 1)]
    _fit(tmp_path / "run", recipe=recipe)
    names = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert all(not n.startswith(".") for n in names)
    assert not (tmp_path / "escape").exists()
    assert len([n for n in names if os.path.isdir(tmp_path / "run" / "checkpoints" / n)]) == 2


def test_only_own_backups_are_deleted(tmp_path):
    run_dir = tmp_path / "run"
    stage_dir = run_dir / "checkpoints" / "top"
    stage_dir.mkdir(parents=True)
    (stage_dir / "epoch-notes.txt").write_text("mine")
    (run_dir / "checkpoints" / "readme.md").write_text("mine")
    _fit(run_dir)
    assert (stage_dir / "epoch-notes.txt").read_text() == "mine"
    assert (run_dir / "checkpoints" / "readme.md").read_text() == "mine"
    # A finished run keeps each stage's final backup only.
    assert sorted(n for n in os.listdir(stage_dir) if n.endswith(".npz")) == [
        "epoch-0004.npz"
    ]
    assert not (run_dir / "checkpoints" / "initial.npz").exists()


def test_resume_state_of_another_run_is_ignored(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run_dir, [CrashAt(3)])
    shutil.rmtree(run_dir / "logs")
    (run_dir / "checkpoints" / "run.json").unlink()
    epochs = Epochs()
    _fit(run_dir, [epochs])  # a new run: the stale stage states don't count
    assert epochs.seen == [0, 1, 2, 3, 4]


def test_stage_state_round_trip(tmp_path, tiny_model):
    state = resume.StageState(str(tmp_path), "run", 0, "s")
    tiny_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    assert state.restore(tiny_model) is None
    assert state.record_epoch(tiny_model, 0, {"loss": 1.0}, 0.1)
    assert not state.record_epoch(tiny_model, 1, {"loss": float("inf")}, 0.1)
    assert state.non_finite == {"epoch": 1, "loss": float("inf"), "what": "loss"}
    again = resume.StageState(str(tmp_path), "run", 0, "s")
    assert again.last_epoch == 0 and again.history().history == {"loss": [1.0]}
    assert resume.StageState(str(tmp_path), "other-run", 0, "s").last_epoch is None


def test_best_weights_h5_written_when_fit_never_ended(tmp_path, monkeypatch):
    # As if killed after the last epoch's backup, before `fit` ended: the
    # .h5 still comes out of the run, holding the best .npz's weights.
    from transfer.training.checkpoints import BestWeightsCheckpoint

    monkeypatch.setattr(BestWeightsCheckpoint, "on_train_end",
                        lambda self, logs=None: None)
    run_dir = tmp_path / "run"
    _fit(run_dir)
    best = run_dir / "checkpoints" / "best.weights.h5"
    assert best.exists()
    reloaded = _model()
    reloaded.load_weights(best)
    with np.load(run_dir / "checkpoints" / "best.npz") as arrays:
        saved = [arrays[k] for k in sorted(arrays.files) if k.startswith("m")]
    for got, want in zip(reloaded.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(got, want)
