"""Saving and loading: atomic `.keras` files, safe mode, JSON sidecars.

Loading never runs code from the file. Before Keras sees a `.keras` archive,
`load_model` reads its member names and its `config.json` and refuses a
member that would land outside the archive (`../x`, `/etc/x`), a `Lambda`
layer or serialized lambda, and any function or class from a module other
than `keras`, `keras_hub` or `transfer` that is not registered with
`keras.saving.register_keras_serializable`. Then Keras loads it in safe mode.
`transfer` never calls `keras.config.enable_unsafe_deserialization()`.
"""

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile

import keras
import numpy as np

from transfer import _io
from transfer import _jax_init

logger = logging.getLogger(__name__)

_ALLOWED_PACKAGES = ("keras", "keras_hub", "transfer")
_LAMBDA_CLASSES = ("Lambda", "__lambda__")
# Keys of a manifest that `load_model` restores as `model.transfer_metadata`.
_METADATA_KEYS = (
    "backbone", "backbone_source", "image_size", "num_classes", "weights",
    "modality", "task", "sequence_length", "lora_rank", "class_names",
    "thresholds", "text_pairs", "family", "pooling", "drop_path",
    "interpolation", "calibration",
)


def non_finite_weights(model):
    """Paths of the model's variables that hold NaN or Inf values."""
    return [
        variable.path
        for variable in model.weights
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable)))
    ]


def save_model(model, path):
    """Saves `model` to a `.keras` file atomically and portably.

    The model is written to a temporary file beside `path`, then moved over
    it with `os.replace`: a crash or a full disk mid-save leaves any previous
    good file at `path` untouched. A model whose weights hold NaN or Inf is
    refused, so a diverged run never replaces a good file. A backend-only
    optimizer class in the compile state (Keras on torch records
    `keras.src.backend.torch.optimizers.torch_adam`) is written as the
    portable `keras.optimizers` class, so the file also trains elsewhere
    when loaded with `keras.saving.load_model(..., compile=True)`.

    Args:
        model: a `keras.Model`.
        path: the target file; must end in `.keras`.

    Returns:
        `path`.

    Raises:
        ValueError: `path` does not end in `.keras`, or the weights are not
            finite.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> transfer.save_model(model, "model.keras")
    'model.keras'
    >>> head = model.get_layer("predictions")
    >>> _ = head.kernel.assign(np.full(head.kernel.shape, np.nan))
    >>> transfer.save_model(model, "model.keras")
    Traceback (most recent call last):
        ...
    ValueError: Refusing to save 'model.keras': 1 weight(s) hold NaN or Inf
    values ...
    >>> transfer.load_model("model.keras").output_shape  # the good file
    (None, 2)
    """
    if not str(path).endswith(".keras"):
        raise ValueError(
            f"Model files end in '.keras'. Received: path={str(path)!r}"
        )
    bad = non_finite_weights(model)
    if bad:
        raise ValueError(
            f"Refusing to save '{path}': {len(bad)} weight(s) hold NaN or Inf "
            f"values (e.g. {bad[:3]}); any previous file there is kept. "
            "Lower the learning rate or check the data for NaN/Inf. "
            "Received: a model with non-finite weights"
        )
    directory = os.path.dirname(os.path.abspath(path))
    # The weights (and optimizer variables) dominate a .keras file's size.
    size = sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in model.weights + list(
            getattr(getattr(model, "optimizer", None), "variables", None) or []
        )
    )
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras",
                                   dir=directory)
        os.close(fd)
        model.save(tmp)
        _make_portable(tmp)
        # mkstemp made it 0600 and Keras kept that: give the mode open()
        # would (0644 under umask 022), as every other run file has.
        os.chmod(tmp, _io.file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _io.write_error(e, path, size) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def _portable_optimizer(config):
    """`config` with a backend-only optimizer class made portable, or None.

    Returns `None` when nothing needs changing.
    """
    optimizer = (config.get("compile_config") or {}).get("optimizer")
    if not isinstance(optimizer, dict):
        return None
    module = str(optimizer.get("module") or "")
    if not module.startswith("keras.src.backend."):
        return None
    name = optimizer.get("class_name")
    if not hasattr(keras.optimizers, str(name)):
        return None
    optimizer = dict(optimizer, module="keras.optimizers", registered_name=None)
    compile_config = dict(config["compile_config"], optimizer=optimizer)
    return dict(config, compile_config=compile_config)


def _rewrite_config(path, config):
    """Rewrites `config.json` of the archive at `path`, in place."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=directory)
    os.close(fd)
    try:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(
            tmp, "w", compression=zipfile.ZIP_DEFLATED
        ) as target:
            for info in source.infolist():
                if info.filename == "config.json":
                    target.writestr(info, json.dumps(config))
                else:
                    with source.open(info) as src, target.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _make_portable(path):
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    portable = _portable_optimizer(config)
    if portable is not None:
        _rewrite_config(path, portable)


def _unsafe_member(name):
    parts = re.split(r"[\\/]", name)
    return (
        name.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", name) is not None
        or ".." in parts
        or "\x00" in name
    )


def _refusals(node, where="config"):
    """Yields why each unsafe object of a Keras config is refused."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refusals(item, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    class_name = node.get("class_name")
    module = node.get("module")
    if class_name in _LAMBDA_CLASSES:
        yield f"a {class_name} (Python code) at {where}"
    elif isinstance(class_name, str) and isinstance(module, str):
        package = module.split(".", 1)[0]
        registered = node.get("registered_name")
        known = registered and keras.saving.get_registered_object(registered)
        if package not in _ALLOWED_PACKAGES and not known:
            kind = "function" if class_name == "function" else "class"
            name = node.get("config") if class_name == "function" else class_name
            yield f"the {kind} '{module}.{name}' at {where}"
    for key, value in node.items():
        if isinstance(value, (dict, list)):
            yield from _refusals(value, f"{where}.{key}")


def inspect_model_file(path):
    """Checks a `.keras` archive before Keras reads it, and returns its config.

    Refuses members named outside the archive (`..`, absolute paths), a
    `Lambda` layer or serialized lambda, and a function or class from any
    module but `keras`, `keras_hub` and `transfer` unless it is a registered
    custom object (`keras.saving.register_keras_serializable`).

    Args:
        path: a `.keras` file.

    Returns:
        The parsed `config.json`.

    Raises:
        ValueError: the file is not a zip archive ("corrupt model file"), has
            no readable `config.json`, or holds any of the above.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = [n for n in names if _unsafe_member(n)]
            if bad:
                raise ValueError(
                    f"Refusing to load '{path}': archive member(s) {bad[:5]} "
                    "would be written outside the archive. The file was not "
                    "made by Keras; do not use it. Received: member names "
                    f"{bad[:5]}"
                )
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError,
            json.JSONDecodeError, OSError) as e:
        raise ValueError(
            f"Corrupt model file '{path}': not a readable .keras archive "
            f"({type(e).__name__}: {e}). Restore it from a checkpoint or save "
            "the model again."
        ) from e
    refused = list(_refusals(config))
    if refused:
        raise ValueError(
            f"Refusing to load '{path}': its config names code that would "
            f"run on load: {'; '.join(refused[:5])}. transfer loads models in "
            "Keras's safe mode only. Rebuild the model from built-in layers, "
            "or register the custom object with "
            "`keras.saving.register_keras_serializable` and load it with "
            "keras.saving.load_model yourself if you trust the file. "
            f"Received: {len(refused)} unsafe object(s)"
        )
    return config


def _sidecar_metadata(path):
    """`transfer_metadata` from the manifest beside `path`, or `None`."""
    # The run directory's manifest (transfer.training.run_dir.MANIFEST), which
    # sits beside model.keras; this module is below training/ in the layers.
    manifest_path = os.path.join(os.path.dirname(path), "manifest.json")
    if not os.path.exists(manifest_path):
        return None
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable '%s': %s", manifest_path, e)
        return None
    if not isinstance(manifest, dict) or manifest.get("model") != (
        os.path.basename(path)
    ):
        return None
    return {k: manifest[k] for k in _METADATA_KEYS if manifest.get(k) is not None}


def _archive_metadata(path):
    """`transfer_metadata` from the archive's own `transfer.json`, or None.

    `transfer export --format keras` writes that member
    (`transfer.export.metadata`), so an exported file knows its classes
    away from its run directory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if "transfer.json" not in archive.namelist():
                return None
            meta = json.loads(archive.read("transfer.json"))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        logger.warning("Ignoring unreadable transfer.json in '%s': %s", path, e)
        return None
    if not isinstance(meta, dict):
        return None
    restored = {k: meta[k] for k in ("class_names", "num_classes", "backbone",
                                     "modality", "task", "calibration")
                if meta.get(k) is not None}
    shape = (meta.get("input") or {}).get("shape")
    if isinstance(shape, list) and shape:
        restored["image_size"] = shape[0]
    return restored


def load_model(path, *, compile=False):
    """Loads a `.keras` file in Keras's safe mode (no code can run).

    The archive is inspected first (`inspect_model_file`): unsafe member
    names, `Lambda` layers and functions from arbitrary modules are refused
    before Keras reads it. KerasHub is imported first when installed, so
    that text classifiers (KerasHub tasks) deserialize. The model comes back
    uncompiled by default: `fit_recipe` recompiles at every stage with a
    fresh optimizer, and prediction needs no optimizer. Pass `compile=True`
    to restore the saved compile state too; a backend-only optimizer class
    (files saved on torch) is loaded as its `keras.optimizers` equivalent,
    so the model trains on any backend.

    When a `manifest.json` written by `fit_recipe` sits beside the file and
    names it (else, when the file holds the `transfer.json` that
    `transfer export --format keras` writes), its `class_names` (and
    backbone details) come back as `model.transfer_metadata`; `fit_recipe` then refuses data whose classes
    differ, unless the head is replaced (`transfer.replace_head`).

    Args:
        path: a `.keras` file.
        compile: restore the saved compile state. Defaults to `False`.

    Returns:
        A `keras.Model`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a valid `.keras` zip ("corrupt model
            file"), or it needs unsafe deserialization.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> transfer.save_model(model, "model.keras")
    'model.keras'
    >>> loaded = transfer.load_model("model.keras")
    >>> loaded.output_shape
    (None, 2)
    >>> all(np.array_equal(a, b)
    ...     for a, b in zip(model.get_weights(), loaded.get_weights()))
    True
    >>> # Code in a model file is refused, before Keras reads it:
    >>> unsafe = keras.Sequential(
    ...     [keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
    >>> unsafe.save("unsafe.keras")
    >>> transfer.load_model("unsafe.keras")
    Traceback (most recent call last):
        ...
    ValueError: Refusing to load 'unsafe.keras': its config names code that
    would run on load: a Lambda (Python code) at ...
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at '{path}'.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"Corrupt model file '{path}': not a .keras (zip) archive. "
            "Restore it from a checkpoint or save the model again."
        )
    config = inspect_model_file(path)
    try:
        import keras_hub  # noqa: F401  (registers KerasHub classes)
    except ImportError:
        pass
    portable = _portable_optimizer(config) if compile else None
    with tempfile.TemporaryDirectory() as scratch:
        source = path
        if portable is not None:
            source = os.path.join(scratch, "portable.keras")
            shutil.copyfile(path, source)
            _rewrite_config(source, portable)
        try:
            # On JAX, no XLA program for initial values the file overwrites.
            with _jax_init.deferred_initialization():
                model = keras.saving.load_model(
                    source, compile=compile, safe_mode=True
                )
        except (OSError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"Corrupt model file '{path}': {type(e).__name__}: {e}. "
                "Restore it from a checkpoint or save the model again."
            ) from e
    metadata = _sidecar_metadata(path) or _archive_metadata(path)
    if metadata:
        model.transfer_metadata = metadata
    return model
