"""The fingerprint of a run: what resuming it must find unchanged.

`fit_recipe` records, when a run starts, the recipe, batch size, class
names and the model's weight shapes (`checkpoints/run.json`), and the model's
input shape and preprocessing with the data's fingerprint
(`transfer.data.fingerprint`: the files of each split with sizes and
modification times, or the arrays' shapes and sha256, plus image size,
seed, validation split and augmentation) in `checkpoints/fingerprint.json`.
A rerun compares and refuses any difference before it trains, listing each
one (`image_size 32 -> 40; 10 files removed from 'a/' ...`), unless
`force_resume=True`.
"""

import hashlib
import json

import keras

from transfer import _model_info
from transfer.data import fingerprint as data_fingerprint

FILE = "fingerprint.json"
SETTINGS = ("recipe", "batch_size", "class_names", "model")


def model_fingerprint(model):
    """A hash of the model's weight shapes, to tell another model apart."""
    shapes = [list(map(int, w.shape)) for w in model.weights]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def _plain(value):
    """`value` as JSON would give it back (tuples as lists, and so on)."""
    return json.loads(json.dumps(value, default=str))


def _model_summary(model):
    preprocessing = [
        {"layer": layer.name, "class": type(layer).__name__,
         **{k: v for k, v in layer.get_config().items()
            if k in ("scale", "offset", "mean", "variance", "axis")}}
        for layer in model.layers
        if isinstance(layer, (keras.layers.Rescaling,
                              keras.layers.Normalization))
    ]
    shape = getattr(model, "input_shape", None)
    metadata = _model_info.metadata(model)
    summary = {
        "input_shape": list(shape) if isinstance(shape, tuple) else shape,
        "backbone": metadata.get("backbone"),
        "preprocessing": preprocessing,
    }
    # Build options that leave the weight shapes alone (pooling, drop
    # path) or add weights (LoRA), where they differ from the CNN defaults:
    # runs recorded before they were compared still resume.
    options = {
        key: metadata.get(key) for key in ("pooling", "lora_rank", "drop_path")
        if metadata.get(key) and not (key == "pooling"
                                      and metadata.get(key) == "avg")
    }
    if options:
        summary["build_options"] = options
    return _plain(summary)


def run_fingerprint(model, recipe, train_data, validation_data, *,
                    batch_size, class_names):
    """`(settings, fingerprint)` of a run, as `fit_recipe` records them.

    `settings` go to `run.json`; `fingerprint` (model input and
    preprocessing, data) to `fingerprint.json`.
    """
    settings = _plain({
        "recipe": recipe.get_config(),
        "batch_size": batch_size,
        "class_names": list(class_names) if class_names is not None else None,
        "model": model_fingerprint(model),
    })
    fingerprint = _plain({
        "model": _model_summary(model),
        "data": {
            "training": data_fingerprint.data_fingerprint(train_data),
            "validation": data_fingerprint.data_fingerprint(validation_data),
        },
    })
    return settings, fingerprint


def _leaf_differences(prefix, old, new):
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            found += _leaf_differences(
                f"{prefix}.{key}", old.get(key), new.get(key))
        return found
    if (isinstance(old, list) and isinstance(new, list)
            and len(old) == len(new) and any(
                isinstance(v, (dict, list)) for v in old)):
        found = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found += _leaf_differences(f"{prefix}[{i}]", a, b)
        return found
    return [f"{prefix} {old!r} -> {new!r}"]


def differences(stored, stored_fingerprint, settings, fingerprint):
    """`(topics, details)`: what differs between a stored run and this one.

    Args:
        stored: the `run.json` of the run directory.
        stored_fingerprint: its `fingerprint.json`, or `None` when it has
            none (runs from before it existed): the data is then not
            compared.
        settings: `run_fingerprint(...)[0]` of this call.
        fingerprint: `run_fingerprint(...)[1]` of this call.

    Returns:
        `topics`, the names of what differs (`"recipe"`, `"batch_size"`,
        `"data"`...), and `details`, one line per difference.
    """
    topics, details = [], []
    for key in SETTINGS:
        old, new = _plain(stored.get(key)), settings[key]
        if old == new:
            continue
        topics.append(key)
        if key == "model":
            details.append(
                "model weight shapes differ (another backbone, head or "
                "number of classes)")
        elif key == "recipe":
            details += [d.replace("recipe.", "recipe ", 1)
                        for d in _leaf_differences("recipe", old, new)]
        else:
            details.append(f"{key} {old!r} -> {new!r}")
    if stored_fingerprint is None:
        return topics, details
    model_details = [
        d.replace("model.", "model ", 1) for d in _leaf_differences(
            "model", stored_fingerprint.get("model"), fingerprint["model"])
    ]
    if model_details:
        topics.append("model input")
        details += model_details
    data_details = data_fingerprint.differences(
        stored_fingerprint.get("data") or {}, fingerprint["data"])
    if data_details:
        topics.append("data")
        details += data_details
    return topics, details


def mismatch_error(run_dir, topics, details, fingerprint_path):
    """The `ValueError` that refuses to resume a changed run."""
    what = [f"another {t}" for t in topics if t != "data"]
    if "data" in topics:
        what.append("other data")
    return ValueError(
        f"'{run_dir}' holds an unfinished run started with "
        f"{' and '.join(what)}: {'; '.join(details)}. Resuming would train "
        "on something else than the epochs done so far. Either restore "
        "what the run started with (recorded in "
        f"'{fingerprint_path}' and run.json) and call again to resume it, "
        "or pass a new run_dir to start over. If you know why it differs, "
        f"force_resume=True resumes anyway. Received: {len(details)} "
        f"difference(s) in {', '.join(topics)}"
    )
