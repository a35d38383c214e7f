"""The only module that branches on `keras.config.backend()`."""

import gc
import importlib.metadata
import logging

import keras

logger = logging.getLogger(__name__)


def backend():
    """The name of the active Keras backend."""
    return keras.config.backend()


def framework_versions():
    """Versions of the libraries a run depends on, for the manifest."""
    names = ["keras", "keras-hub", "tensorflow", "numpy"]
    names.append({"jax": "jax", "torch": "torch"}.get(backend(), "tensorflow"))
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def require_tensorboard():
    """Checks that TensorBoard summaries can be written on this backend.

    `keras.callbacks.TensorBoard` writes through `tensorflow.summary` on
    every backend, so TensorFlow must be importable even under JAX or torch.
    """
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "TensorBoard logging needs TensorFlow installed, on every Keras "
            f"backend (current backend: {backend()}). Install it with "
            "`pip install tensorflow-cpu`."
        ) from e


def clear_memory():
    """Frees what the backend holds between large steps (e.g. two models)."""
    keras.backend.clear_session()
    gc.collect()
    if backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
