"""The only module that branches on `keras.config.backend()`."""

import importlib.metadata
import logging
import os

import keras

logger = logging.getLogger(__name__)

# `TRANSFER_COMPILATION_CACHE=0` turns the JAX persistent compilation cache
# off (`transfer --no-compilation-cache` sets it for one command); a
# directory puts it there.
COMPILATION_CACHE_MAX_BYTES = 2 * 1024**3
COMPILATION_CACHE_ENV = "TRANSFER_COMPILATION_CACHE"


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


def _default_compilation_cache_dir():
    # The same root as `transfer.weights.cache.cache_dir`, which this
    # bottom-layer module cannot import.
    root = os.environ.get("TRANSFER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME")
        or os.path.join(os.path.expanduser("~"), ".cache"),
        "keras-transfer",
    )
    return os.path.join(root, "jax-compilation-cache")


def configure_compilation_cache():
    """Turns on JAX's persistent compilation cache, on the JAX backend.

    JAX compiles each training and prediction step with XLA on its first
    call (seconds to tens of seconds on a CPU for a CNN); with the cache,
    the compiled programs are written under the user cache directory
    (`~/.cache/keras-transfer/jax-compilation-cache`, or under
    `TRANSFER_CACHE_DIR`) and a later process running the same model and
    shapes loads them instead, small programs included (the minimum compile
    time to cache is 0 s instead of JAX's 1 s, unless the user changed it),
    and the least recently used programs are deleted past 2 GiB (JAX's
    default has no limit).
    Called once when `transfer` is imported.

    `TRANSFER_COMPILATION_CACHE` set to a directory puts the cache there;
    `TRANSFER_COMPILATION_CACHE=0` (`transfer --no-compilation-cache`)
    turns it off. Left alone: other backends, and a cache directory the
    user already gave JAX (`JAX_COMPILATION_CACHE_DIR` or `jax.config`).

    Returns:
        The cache directory in use, or `None` (off, or not JAX).
    """
    if backend() != "jax":
        return None
    import jax  # only on the JAX backend

    chosen = jax.config.jax_compilation_cache_dir
    if chosen:
        return chosen
    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in ("0", "false", "no", "off"):
        return None
    directory = (
        _default_compilation_cache_dir()
        if setting.lower() in ("", "1", "true", "yes", "on")
        else setting
    )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        logger.warning(
            "JAX compilation cache off: cannot create '%s' (%s). Set "
            "TRANSFER_CACHE_DIR to a writable directory.", directory, e)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:
        # JAX's default keeps only programs that took over 1 s to compile.
        # Building a model on JAX compiles one small program per weight
        # initializer and shape (EfficientNet-Lite0: about 150, 12 s in all
        # on 2 CPU cores), each under 1 s: caching them too took the build
        # from 13 s to 3 s on a second run (benchmarks/first_step.py). A
        # value the user set is kept.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size == -1:
        # JAX's default lets the directory grow without end; past this,
        # the least recently used programs are deleted.
        jax.config.update("jax_compilation_cache_max_size",
                          COMPILATION_CACHE_MAX_BYTES)
    return directory


def compilation_cache():
    """The JAX persistent compilation cache directory in use, or `None`.

    For the manifest: `None` on TensorFlow and torch, and on JAX when the
    cache is off.
    """
    if backend() != "jax":
        return None
    import jax  # only on the JAX backend

    return jax.config.jax_compilation_cache_dir or None


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


def supported_profile_batch(profile_batch):
    """`profile_batch` for `keras.callbacks.TensorBoard` on this backend.

    `transfer` profiles through TensorFlow's profiler, so only the TensorFlow
    backend profiles. Elsewhere this logs one line and returns `0`
    (profiling off) instead of failing: Keras raises on torch, and on JAX it
    needs Python 3.12 and writes traces no other backend can compare with.

    Args:
        profile_batch: `0` (off), a batch number, or a `(start, stop)` pair of
            batch numbers, as `keras.callbacks.TensorBoard` takes it.

    Returns:
        `profile_batch` on TensorFlow, otherwise `0`.

    Raises:
        ValueError: `profile_batch` is neither a non-negative integer nor a
            pair of them, on every backend alike.
    """
    values = (
        profile_batch
        if isinstance(profile_batch, (tuple, list))
        else (profile_batch,)
    )
    if len(values) not in (1, 2) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for v in values
    ):
        raise ValueError(
            "`profile_batch` must be 0 (off), a batch number, or a (start, "
            f"stop) pair of batch numbers. Received: profile_batch="
            f"{profile_batch!r}"
        )
    if not any(values):
        return 0
    if backend() == "tensorflow":
        return profile_batch
    logger.warning(
        "Profiling is only supported on the TensorFlow backend; running "
        "without it on %s (profile_batch=%r ignored).",
        backend(),
        profile_batch,
    )
    return 0


# Which backends export each format with the packages of the `export` extra.
# Keras also routes ONNX on JAX through jax2onnx, LiteRT on torch through
# litert-torch and SavedModel on torch through torch_xla; none of them is a
# dependency of `transfer`, so those combinations are refused up front.
EXPORT_BACKENDS = {
    "keras": ("tensorflow", "jax", "torch"),
    "saved_model": ("tensorflow", "jax"),
    "onnx": ("tensorflow", "torch"),
    "litert": ("tensorflow",),
}


def check_export_format(export_format):
    """Raises `ValueError` unless this backend exports `export_format`.

    The message names the backends that can: a `.keras` model trained on
    any backend loads on every other, so exporting there works.
    """
    if export_format not in EXPORT_BACKENDS:
        raise ValueError(
            f"Unknown export format {export_format!r}. Choose one of "
            f"{sorted(EXPORT_BACKENDS)}. Received: format={export_format!r}"
        )
    able = EXPORT_BACKENDS[export_format]
    if backend() not in able:
        raise ValueError(
            f"The {backend()} backend cannot export format "
            f"'{export_format}' here; the {' or '.join(able)} backend can. "
            f"Run the same command with KERAS_BACKEND={able[0]} (the "
            f".keras model loads on any backend). Received: "
            f"format={export_format!r}, backend={backend()!r}"
        )


def writes_image_signature():
    """Whether SavedModel exports get the `serve_images` signature.

    Only on TensorFlow: on JAX the SavedModel's functions come from
    `jax2tf`, which cannot hold TensorFlow's image decoders.
    """
    return backend() == "tensorflow"


def predict_on_batch(model, batch):
    """`model.predict_on_batch(batch)`, right under `tf.distribute` too.

    On TensorFlow, Keras 3.15's `predict_on_batch` of a model built in a
    `MirroredStrategy` scope runs the whole batch on every replica and
    concatenates the outputs (4 replicas: 4 times the rows); `predict`
    splits the batch as `fit` does.
    """
    if backend() == "tensorflow":
        strategy = getattr(model, "_distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            return model.predict(batch, batch_size=len(batch), verbose=0)
    return model.predict_on_batch(batch)


def separate_optimizer_buffers(model):
    """Gives every optimizer variable its own buffer (JAX only).

    At the end of `fit`, `Adam(use_ema=True)` assigns the moving averages to
    the model's weights; on JAX the two variables then share one array, and
    the next jitted `predict` donates it, deleting the optimizer's copy
    ("Array has been deleted"). Copying the optimizer variables avoids it.
    """
    if backend() != "jax" or getattr(model, "optimizer", None) is None:
        return
    import jax.numpy as jnp

    for variable in model.optimizer.variables:
        variable.assign(jnp.array(variable.value, copy=True))


def accelerator():
    """`"gpu"`, `"tpu"` or `"cpu"`: what the backend computes on."""
    name = backend()
    if name == "jax":
        import jax

        platform = jax.devices()[0].platform
        return platform if platform in ("gpu", "tpu") else "cpu"
    if name == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def _gpu_supports_bfloat16():
    name = backend()
    if name == "torch":
        import torch

        return bool(torch.cuda.is_bf16_supported())
    if name == "jax":
        import jax

        capability = getattr(jax.devices()[0], "compute_capability", "8.0")
        return float(capability) >= 8.0
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)


def auto_precision():
    """The dtype policy `precision="auto"` picks: `"mixed_bfloat16"` on a TPU
    or a GPU with bfloat16 (compute capability 8.0 and up), else
    `"float32"` (on this project's CPUs bfloat16 measured slower: no AMX)."""
    device = accelerator()
    if device == "tpu" or (device == "gpu" and _gpu_supports_bfloat16()):
        return "mixed_bfloat16"
    return "float32"


def check_precision(policy):
    """Refuses a dtype policy this backend and device cannot train with."""
    if policy == "mixed_float16" and accelerator() == "tpu":
        raise ValueError(
            "TPUs compute in bfloat16, not float16: use "
            "precision='mixed_bfloat16' (or 'auto'). "
            "Received: precision='mixed_float16'"
        )


def auto_jit_compile():
    """What `jit_compile="auto"` compiles with: JAX always compiles (XLA is
    its only path); on CPU, TensorFlow and torch run without XLA /
    `torch.compile` (XLA measured ~10x slower here for Keras-TF); on an
    accelerator, Keras's own `"auto"` decides."""
    if backend() == "jax":
        return True
    return "auto" if accelerator() != "cpu" else False
