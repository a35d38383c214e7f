"""A run directory that nothing can corrupt (issue 16), one test per finding:

1. a refused `transfer train` leaves the run directory byte-identical;
2. a resume with other data or settings is refused, the differences listed;
3. a failed write (ENOSPC) at any point of an epoch, then a resume, ends
   with the best weights and a manifest whose files all exist;
4. a corrupt manifest is rebuilt from config.json with a note, or is an
   error naming it; never numeric labels;
5. duplicate config keys, symlinked class folders, hidden files, WebP and
   16-bit PNGs.

The CLI runs in this process (`transfer.cli.main`) on a folder of 32 PNGs.

Covers: transfer.training (fit, resume, fingerprint, best_weights, lock),
transfer.data (fingerprint, preflight, images), transfer.workflow,
transfer.prediction, transfer._io.
"""

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from transfer.cli import main
from transfer.data import image_files
from transfer.training import lock
from transfer.training import resume

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

RECIPE_YAML = """\
image_size: 32
batch_size: 8
weights: none
stages:
  - {name: head, epochs: 1, learning_rate: 1.0e-2}
  - {name: top, epochs: 2, learning_rate: 5.0e-3, trainable_blocks: 1}
"""


class Crash(Exception):
    pass


def _digest(directory):
    """sha256 over every file's relative path and bytes under `directory`."""
    digest = hashlib.sha256()
    for root, folders, files in sorted(os.walk(directory)):
        folders.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _write_folder(root, num_images=32, seed=0):
    x, y = transfer.synthetic_images(num_images, 32, 2, seed=seed)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = os.path.join(root, "ab"[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(
            os.path.join(folder, f"{i:02d}.png"))


def _train(root, *extra, run="run"):
    return main(["train", "--data", str(root / "data"), "--backbone",
                 "tiny_cnn", "--config", str(root / "recipe.yaml"),
                 "--output", str(root / run), "-q", *extra])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A `transfer train` run killed in stage 'top' (after epoch 1)."""
    root = tmp_path_factory.mktemp("integrity")
    _write_folder(str(root / "data"))
    _write_folder(str(root / "other"), seed=1)
    (root / "recipe.yaml").write_text(RECIPE_YAML)
    original = resume.StageBackup.on_epoch_end

    def crash(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise Crash("killed")

    resume.StageBackup.on_epoch_end = crash
    try:
        assert _train(root) == 1
    finally:
        resume.StageBackup.on_epoch_end = original
    keras.backend.clear_session()
    assert not (root / "run" / "manifest.json").exists()
    assert (root / "run" / "config.json").exists()
    return root


def _copy_run(root, name):
    shutil.rmtree(root / name, ignore_errors=True)
    shutil.copytree(root / "run", root / name, symlinks=True)
    return root / name


HOLDER = f"""
import importlib.util, sys, time

spec = importlib.util.spec_from_file_location("lock", {lock.__file__!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
with module.RunDirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


# 1. A refused second run must not touch the run directory.
def test_refused_train_leaves_the_run_dir_byte_identical(interrupted, capsys):
    root = interrupted
    run = _copy_run(root, "busy")
    config = (run / "config.json").read_text()
    before = _digest(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _digest(run)  # the holder's record is in the lock file
        code = main(["train", "--data", str(root / "other"), "--backbone",
                     "tiny_cnn", "--config", str(root / "recipe.yaml"),
                     "--seed", "5", "--validation-split", "0.5",
                     "--output", str(run), "-q"])
        assert code == 1
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert _digest(run) == before
        assert (run / "config.json").read_text() == config
    finally:
        holder.kill()
        holder.wait()
    # Refused by its state (other data): byte-identical too.
    before = _digest(run)
    assert _train(root, "--seed", "5", run="busy") == 2
    assert _digest(run) == before
    # A config refused by fit_recipe's checks leaves no run directory.
    (root / "bad.yaml").write_text(RECIPE_YAML.replace(
        "trainable_blocks: 1", "trainable_blocks: 99"))
    code = main(["train", "--data", str(root / "data"), "--backbone",
                 "tiny_cnn", "--config", str(root / "bad.yaml"), "--output",
                 str(root / "refused"), "-q"])
    assert code == 2
    assert "trainable_blocks" in capsys.readouterr().err
    assert not (root / "refused").exists()


# 2. Resume checks the data and settings it started with.
def test_resume_with_changed_data_or_settings_is_refused(interrupted, capsys):
    root = interrupted
    run = _copy_run(root, "changed")
    before = _digest(run)
    removed = sorted(os.listdir(root / "data" / "a"))[:10]
    (root / "aside").mkdir()
    for name in removed:  # os.rename keeps the modification times
        os.rename(root / "data" / "a" / name, root / "aside" / name)
    try:
        assert _train(root, run="changed") == 2
    finally:
        for name in removed:
            os.rename(root / "aside" / name, root / "data" / "a" / name)
    err = capsys.readouterr().err
    assert "10 files removed from 'a/'" in err
    assert "Rerun the same command" not in err
    assert "restore what the run started with" in err and "new run_dir" in err
    assert _digest(run) == before
    assert _train(root, "--image-size", "40", run="changed") == 2
    assert "image_size 32 -> 40" in capsys.readouterr().err
    assert _train(root, "--seed", "5", run="changed") == 2
    err = capsys.readouterr().err
    assert "seed 1337 -> 5" in err and "moved between the training" in err
    assert _train(root, "--no-augment", run="changed") == 2
    assert "augmentation 'RandomFlip" in capsys.readouterr().err
    assert _digest(run) == before
    # force_resume: resumed, and the differences are recorded.
    assert _train(root, "--seed", "5", "--force-resume", run="changed") == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["attempts"] == 2
    assert "seed 1337 -> 5" in manifest["attempt_log"][1]["forced_differences"]


def test_resume_with_changed_arrays_is_refused(tmp_path):
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Crash("killed")

    with pytest.raises(Crash):
        transfer.fit_recipe(model, [transfer.Stage("h", 2, 1e-3)], (x, y),
                            run_dir=str(tmp_path / "run"), batch_size=8,
                            callbacks=[Stop()], verbose=0)
    before = _digest(tmp_path / "run")
    changed = x.copy()
    changed[0, 0, 0, 0] += 1
    with pytest.raises(ValueError, match=r"training x holds other values"):
        transfer.fit_recipe(model, [transfer.Stage("h", 2, 1e-3)],
                            (changed, y), run_dir=str(tmp_path / "run"),
                            batch_size=8, verbose=0)
    assert _digest(tmp_path / "run") == before


# 3. A full disk at any write of an epoch loses nothing.
def _data():
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    return transfer.make_dataset(x, y, image_size=32, batch_size=8)


RECIPE = [transfer.Stage("head", 2, 1e-2, 0), transfer.Stage("top", 2, 5e-3, 1)]


class _Writes:
    """Counts `os.replace` (every file `transfer` commits ends with one)
    and makes the `fail`-th raise ENOSPC, as a full disk would."""

    def __init__(self, fail=None):
        self.fail, self.count, self.targets, self.epochs = fail, 0, [], {}
        self.real = os.replace

    def __call__(self, source, target, *args, **kwargs):
        self.count += 1
        if self.count == self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.targets.append(os.path.basename(str(target)))
        return self.real(source, target, *args, **kwargs)


class _EpochMarks(keras.callbacks.Callback):
    def __init__(self, writes):
        super().__init__()
        self.writes = writes

    def on_epoch_begin(self, epoch, logs=None):
        self.writes.epochs[epoch] = self.writes.count


def _fit(run_dir, writes, monkeypatch):
    keras.utils.set_random_seed(7)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    monkeypatch.setattr(os, "replace", writes)
    try:
        return transfer.fit_recipe(
            model, RECIPE, _data(), validation_data=_data(),
            run_dir=str(run_dir), callbacks=[_EpochMarks(writes)], verbose=0)
    finally:
        monkeypatch.setattr(os, "replace", writes.real)


def _weights(path):
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    model.load_weights(path)
    return model.get_weights()


def _check_finished(run_dir, reference):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        path = run_dir / name
        assert path.exists(), name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name
    assert (run_dir / manifest["checkpoint"]).exists()
    assert manifest["best"] == reference["best"]
    got = _weights(run_dir / "checkpoints" / "best.weights.h5")
    for a, b in zip(got, reference["weights"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert manifest["seconds"] == pytest.approx(
        sum(a["seconds"] for a in manifest["attempt_log"]), abs=0.02)
    return manifest


def test_full_disk_at_any_write_of_an_epoch_keeps_the_best_weights(
    tmp_path, monkeypatch
):
    writes = _Writes()
    _fit(tmp_path / "reference", writes, monkeypatch)
    reference = json.loads(
        (tmp_path / "reference" / "manifest.json").read_text())
    reference["weights"] = _weights(
        tmp_path / "reference" / "checkpoints" / "best.weights.h5")
    # An epoch after the first that improved on the best: its writes (and,
    # for a stage's last epoch, the stage's) fail one by one.
    marks = sorted(writes.epochs.items()) + [(None, writes.count)]
    spans = [(epoch, first, marks[i + 1][1])
             for i, (epoch, first) in enumerate(marks[:-1])]
    improving = [s for s in spans if "best.npz" in writes.targets[s[1]:s[2]]]
    epoch, first, end = ([s for s in improving if s[0] > 0] or improving)[0]
    assert end - first >= 3  # the backup, best.npz and state.json at least
    for k in range(first + 1, end + 1):
        run_dir = tmp_path / f"fail{k}"
        failing = _Writes(fail=k)
        with pytest.raises(OSError, match="No space left on device") as info:
            _fit(run_dir, failing, monkeypatch)
        assert info.value.errno == errno.ENOSPC
        assert str(run_dir) in str(info.value) and "Free space" in str(
            info.value)
        assert not (run_dir / "manifest.json").exists()
        manifest = _check_finished_after_resume(run_dir, reference,
                                                monkeypatch)
        assert manifest["attempts"] == 2, k
        assert len(manifest["attempt_log"]) == 2


def _check_finished_after_resume(run_dir, reference, monkeypatch):
    _fit(run_dir, _Writes(), monkeypatch)
    return _check_finished(run_dir, reference)


def test_resumed_model_keeps_its_optimizer_state(tmp_path, monkeypatch):
    writes = _Writes()
    _fit(tmp_path / "reference", writes, monkeypatch)
    iterations = int(transfer.load_model(
        tmp_path / "reference" / "model.keras", compile=True
    ).optimizer.iterations)
    assert iterations > 0
    # The disk fills while the finished run writes its manifest.
    fail = len(writes.targets) - writes.targets[::-1].index(
        "manifest.json")
    with pytest.raises(OSError, match="manifest.json"):
        _fit(tmp_path / "run", _Writes(fail=fail), monkeypatch)
    _fit(tmp_path / "run", _Writes(), monkeypatch)  # every stage was done
    model = transfer.load_model(tmp_path / "run" / "model.keras", compile=True)
    assert int(model.optimizer.iterations) == iterations


def test_failed_write_names_the_path_and_the_fix(tmp_path, monkeypatch):
    from transfer import _io

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        _io.atomic_write(str(tmp_path / "a.npz"), full, size=1234)
    assert "a.npz" in str(info.value) and "1,234 bytes needed" in str(
        info.value) and "Free space" in str(info.value)

    def denied(f):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError, match="writable"):
        _io.atomic_write(str(tmp_path / "b.json"), denied)
    assert os.listdir(tmp_path) == []


# 4. One source of truth for class names.
@pytest.fixture(scope="module")
def finished(interrupted):
    root = interrupted
    run = _copy_run(root, "finished")
    assert _train(root, run="finished") == 0
    keras.backend.clear_session()
    return root, run


def test_corrupt_manifest_never_gives_numeric_labels(finished, capsys,
                                                     caplog):
    root, run = finished
    image = sorted((root / "data" / "a").iterdir())[0]
    broken = root / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(run, broken)
    (broken / "manifest.json").write_text('{"class_names": ["a", ')
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="transfer"):
        assert main(["predict", str(broken), str(image)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out[0]["predictions"][0]["class"] in ("a", "b")
    assert "manifest.json" in caplog.text and "config.json" in caplog.text
    assert main(["evaluate", str(broken), "--data", str(root / "data")]) == 0
    capsys.readouterr()
    (broken / "config.json").unlink()
    assert main(["predict", str(broken), str(image)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "class names" in err
    (broken / "manifest.json").unlink()
    assert main(["predict", str(broken), str(image)]) == 2
    assert "is missing" in capsys.readouterr().err


# 5. Silent misconfiguration.
def test_duplicate_config_keys_exit_2_with_the_line(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("image_size: 32\nbatch_size: 8\nseed: 1\nbatch_size: 16\n")
    code = main(["train", "--data", str(tmp_path), "--backbone", "tiny_cnn",
                 "--config", str(path), "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'batch_size' twice on lines 2 and 4" in err
    json_path = tmp_path / "dup.json"
    json_path.write_text('{\n  "seed": 1,\n  "seed": 2\n}\n')
    with pytest.raises(ValueError, match=r"'seed' twice on lines 2 and 3"):
        transfer.run_config.resolve_config(
            str(json_path), {"data": "d", "backbone": "tiny_cnn"})
    with pytest.raises(ValueError, match="'epochs' twice"):
        (tmp_path / "r.yaml").write_text(
            "stages:\n  - {name: a, epochs: 1, learning_rate: 0.1, epochs: 2}\n")
        transfer.load_recipe(str(tmp_path / "r.yaml"))


def test_symlinked_class_folder_is_refused(tmp_path):
    _write_folder(str(tmp_path / "data"), 8)
    os.symlink(tmp_path / "data" / "a", tmp_path / "data" / "c")
    with pytest.raises(ValueError, match=r"'a' and 'c'.*same files"):
        transfer.load_image_folder(str(tmp_path / "data"), image_size=32,
                                   verbose=0)
    # A symlink to a folder of its own is fine.
    (tmp_path / "data" / "c").unlink()
    shutil.copytree(tmp_path / "data" / "a", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "c")
    _, _, names = transfer.load_image_folder(
        str(tmp_path / "data"), image_size=32, verbose=0)
    assert names == ["a", "b", "c"]


def test_hidden_files_skipped_and_webp_read_everywhere(tmp_path):
    data = tmp_path / "data"
    _write_folder(str(data), 16)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(data / "a" / ".hidden.png")
    (data / "a" / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (data / "b" / ".thumbs").mkdir()
    Image.new("RGB", (32, 32)).save(data / "b" / ".thumbs" / "t.png")
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), "uint8")
    Image.fromarray(pixels).save(data / "a" / "w.webp", lossless=True)
    train, val, _ = transfer.load_image_folder(
        str(data), image_size=32, validation_split=0.25, verbose=0)
    report = train.transfer_preflight
    assert report.hidden == 3 and not report.bad
    files = set(train.transfer_fingerprint["files"]) | set(
        val.transfer_fingerprint["files"])
    assert "a/w.webp" in files and len(files) == 17
    assert not any("hidden" in f or "._" in f or "thumbs" in f for f in files)
    # Training reads the WebP file as prediction does.
    seen = np.concatenate([np.asarray(x) for x, _ in train.concatenate(val)])
    predicted = image_files.read_image(str(data / "a" / "w.webp"), 32)
    assert any(np.array_equal(image, predicted) for image in seen)
    found = transfer.prediction.expand_files([str(data)])
    assert str(data / "a" / "w.webp") in found and len(found) == 17
    (tmp_path / "x.tiff").write_bytes(b"II*\x00")
    with pytest.raises(ValueError, match="x.tiff.*training would not"):
        transfer.prediction.expand_files([str(tmp_path / "x.tiff")])


def test_16_bit_png_predicts_as_its_8_bit_conversion(finished, tmp_path):
    _, run = finished
    model, _ = transfer.workflow.load_run(str(run))
    gray = np.random.default_rng(0).integers(0, 256, (32, 32)).astype("uint8")
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype("uint16") * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    eight, sixteen = transfer.prediction.predict_files(
        model, [str(tmp_path / "eight.png"), str(tmp_path / "sixteen.png")],
        top_k=2)
    assert [p["class"] for p in eight["predictions"]] == [
        p["class"] for p in sixteen["predictions"]]
    np.testing.assert_allclose(
        [p["probability"] for p in eight["predictions"]],
        [p["probability"] for p in sixteen["predictions"]], atol=1e-6)
    # Training reads the 16-bit file through the same conversion.
    np.testing.assert_array_equal(
        image_files.read_image(str(tmp_path / "sixteen.png")),
        image_files.read_image(str(tmp_path / "eight.png")))
