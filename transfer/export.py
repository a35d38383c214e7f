"""Saving and loading: atomic `.keras` files, safe mode, JSON sidecars."""

import json
import os
import tempfile
import zipfile

import keras

from transfer.weights.cache import atomic_write


def save_model(model, path):
    """Saves `model` to a `.keras` file atomically.

    The model is written to a temporary file beside `path`, then moved over
    it with `os.replace`: a crash or a full disk mid-save leaves any previous
    good file at `path` untouched.
    """
    if not str(path).endswith(".keras"):
        raise ValueError(
            f"Model files end in '.keras'. Received: path={str(path)!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_model(path, *, compile=False):
    """Loads a `.keras` file in Keras's safe mode (no code can run).

    KerasHub is imported first when installed, so that text classifiers
    (KerasHub tasks) deserialize. The model comes back uncompiled by default:
    `fit_recipe` recompiles at every stage with a fresh optimizer, and
    prediction needs no optimizer. Pass `compile=True` to restore the saved
    compile state too.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a valid `.keras` zip ("corrupt model
            file"), or it needs unsafe deserialization.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at '{path}'.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Corrupt model file '{path}': not a .keras (zip) archive. "
            "Restore it from a checkpoint or save the model again."
        )
    try:
        import keras_hub  # noqa: F401  (registers KerasHub classes)
    except ImportError:
        pass
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def write_json(path, data):
    """Writes JSON atomically (temporary file, fsync, `os.replace`)."""
    atomic_write(
        path,
        lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str),
        mode="w",
    )
    return path
