"""A model saved on any backend loads and fine-tunes on any other.

A session fixture saves one tiny classifier per backend, each in its own
subprocess (`KERAS_BACKEND=x python -c ...`); the tests load all three on the
backend under test, so the three backend runs of the suite cover all 9
pairs. (Under `make test` the three runs share the saved models.)

Covers: transfer.saving across backends.
"""

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import transfer

BACKENDS = ("tensorflow", "jax", "torch")
TESTS = os.path.dirname(os.path.abspath(__file__))

SAVE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import conftest, keras, numpy as np, transfer
    out = sys.argv[1]
    keras.utils.set_random_seed(5)
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    transfer.fit_recipe(model, [transfer.Stage("head", 1, 1e-2, 0)], (x, y),
                        run_dir=os.path.join(out, "run"), batch_size=8,
                        class_names=["a", "b"], verbose=0)
    model.save(os.path.join(out, "raw.keras"))  # Keras's own, as saved
    np.save(os.path.join(out, "predictions.npy"), model.predict(x, verbose=0))
""")


# `make test` runs the suite once per backend and points this at one
# directory for the three runs: the models are saved once, not three times.
SHARED_DIR_ENV = "TRANSFER_TEST_SHARED_DIR"


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """{backend: directory} of a model saved under each backend."""
    shared = os.environ.get(SHARED_DIR_ENV)
    if shared:
        root = pathlib.Path(shared) / "portability"
    else:
        root = tmp_path_factory.mktemp("saved")
    root.mkdir(parents=True, exist_ok=True)
    # `make test` runs suites in parallel (tests/run_backends.py): the
    # first to get here saves the models, the others wait for it.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _save_missing(root)
    return {backend: root / backend for backend in BACKENDS}


def _save_missing(root):
    processes = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for backend in BACKENDS:
        out = root / backend
        if (out / "predictions.npy").exists():  # written last
            continue
        out.mkdir(parents=True, exist_ok=True)
        processes[backend] = subprocess.Popen(
            [sys.executable, "-c", SAVE.format(tests=TESTS), str(out)],
            env=dict(env, KERAS_BACKEND=backend), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
    for backend, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"saving on {backend}: {stderr[-3000:]}"


def _optimizer_module(path):
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    return config["compile_config"]["optimizer"]["module"]


@pytest.mark.parametrize("source", BACKENDS)
def test_load_and_fine_tune_a_model_saved_on(source, saved, tmp_path):
    directory = saved[source]
    x, y = transfer.synthetic_images(16, 32, 2, seed=0)
    expected = np.load(directory / "predictions.npy")
    path = directory / "run" / "model.keras"
    # transfer.save_model writes a portable optimizer class on every backend.
    assert _optimizer_module(path) == "keras.optimizers"

    model = transfer.load_model(path, compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    assert model.transfer_metadata["class_names"] == ["a", "b"]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    # Keras's own file (torch-only optimizer class when saved on torch)
    # loads with its compile state and trains here too.
    raw = directory / "raw.keras"
    if source == "torch":
        assert _optimizer_module(raw).startswith("keras.src.backend.torch")
    model = transfer.load_model(raw, compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    # And fit_recipe fine-tunes it (it recompiles anyway).
    model = transfer.load_model(path)
    histories = transfer.fit_recipe(
        model, [transfer.Stage("top", 1, 1e-3, 1)], (x, y),
        run_dir=str(tmp_path / "finetune"), batch_size=8, verbose=0,
    )
    assert np.isfinite(histories[0].history["loss"][0])
    manifest = json.loads((tmp_path / "finetune" / "manifest.json").read_text())
    assert manifest["class_names"] == ["a", "b"]
    assert manifest["backend"] == keras.config.backend()
