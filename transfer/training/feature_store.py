"""A persistent feature cache: head-only stages reuse features across runs.

`transfer.training.feature_cache` computes a frozen backbone's features once per
head-only stage, in memory. Rerunning that stage (a sweep over head
learning rates, a second run, a retry) pays for that forward pass again.
With `fit_recipe(..., feature_cache_dir=DIR)` the features are looked up in
`DIR` first and stored there after they are computed.

An entry's key (sha256 hex) covers everything that determines the features:
the Keras version and backend, the feature extractor's config (inputs ->
`pooler`, with auto-generated layer names such as `input_layer_3` replaced
by their position, so a freshly built identical model matches, and without
`trainable` flags, which differ between stages but not in `predict`) and the
bytes of all its weights (trainable or not, BatchNorm statistics
included), and the examples with their labels, as the data yields them:
the pixels after resizing, so images resized to another size or with
another interpolation (`load_image_folder(..., interpolation=...)`) get
another key. Not the batch the features were computed at
(`feature_cache.inference_batch_size`): in inference mode each example's
features depend on that example only, up to float rounding. `(x, y)`
arrays are hashed as bytes, dtype and shape. A `tf.data.Dataset` is read once, without the
model; when it shuffles, the per-example digests are sorted, so the order
it yields does not matter. Data that cannot be read without side effects
or cannot be told apart (a `keras.utils.PyDataset`, a generator, random
augmentation) gets no disk entry; the reason goes to the log and manifest.

Each entry is `DIR/<key>.npz` (`features`, `labels`, `key`), written
atomically, read with `allow_pickle=False`, plus `DIR/<key>.json`, a
summary for humans. A corrupt or mismatched entry is logged, recomputed and
overwritten. Nothing is ever evicted; deleting `DIR` (or any entry) is
safe: the features are computed again.
"""

import datetime
import hashlib
import json
import logging
import os
import time

import keras
import numpy as np

from transfer import _inputs
from transfer._io import atomic_write
from transfer.data import fingerprint as data_fingerprint

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class UnhashableDataError(ValueError):
    """The data cannot be hashed; the message says why."""


def check_feature_cache_dir(feature_cache_dir):
    """Raises unless `feature_cache_dir` is `None` or a usable directory
    path (it may not exist yet)."""
    if feature_cache_dir is None:
        return
    if not isinstance(feature_cache_dir, (str, os.PathLike)):
        raise TypeError(
            "`feature_cache_dir` must be a directory path or None. "
            f"Received: feature_cache_dir={feature_cache_dir!r}"
        )
    path = os.path.expanduser(os.fspath(feature_cache_dir))
    if not path or (os.path.exists(path) and not os.path.isdir(path)):
        raise ValueError(
            "`feature_cache_dir` must name a directory (created if missing),"
            f" not a file. Received: feature_cache_dir={path!r}"
        )


def _update(digest, value):
    """Adds a nested structure of arrays to `digest`: dtype, shape, bytes."""
    if isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for name in sorted(value):
            digest.update(repr(name).encode())
            _update(digest, value[name])
        return
    if isinstance(value, (list, tuple)):
        digest.update(f"seq{len(value)}".encode())
        for item in value:
            _update(digest, item)
        return
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.hasobject:
        raise UnhashableDataError("it holds Python objects (dtype=object)")
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    # The values' sha256, which `fit_recipe`'s run fingerprint has already
    # computed for large arrays (`data_fingerprint.shared_digests`).
    digest.update(data_fingerprint.bytes_sha256(array))


def _layer_names(config, names):
    """Every layer name of a (nested) model config, in order of
    appearance, mapped to its position."""
    if isinstance(config, dict):
        layers = config.get("layers")
        if isinstance(layers, list):
            for layer in layers:
                if not isinstance(layer, dict):
                    continue
                name = layer.get("name") or layer.get("config", {}).get("name")
                if isinstance(name, str):
                    names.setdefault(name, f"layer_{len(names)}")
        for value in config.values():
            _layer_names(value, names)
    elif isinstance(config, (list, tuple)):
        for value in config:
            _layer_names(value, names)
    return names


def _rename(config, names):
    """`config` with layer names replaced by their position and without
    `trainable` flags, which do not change what `predict` computes."""
    if isinstance(config, dict):
        return {key: _rename(value, names) for key, value in config.items()
                if key != "trainable"}
    if isinstance(config, (list, tuple)):
        return [_rename(value, names) for value in config]
    if isinstance(config, str):
        return names.get(config, config)
    return config


def model_digest(feature_model):
    """sha256 hex of a model's config (layer names by position, no
    `trainable` flags) and of the bytes, dtype and shape of all its
    weights."""
    config = feature_model.get_config()
    config = _rename(config, _layer_names(config, {}))
    digest = hashlib.sha256(
        json.dumps(config, sort_keys=True, default=repr).encode()
    )
    for weight in feature_model.weights:
        _update(digest, keras.ops.convert_to_numpy(weight.value))
    return digest.hexdigest()


def _example(value, index):
    """Example `index` of a nested batch."""
    if isinstance(value, dict):
        return {name: _example(v, index) for name, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_example(v, index) for v in value]
    return value[index]


def data_digest(data, *, ordered):
    """sha256 hex of a stage's examples and labels, and their count.

    Args:
        data: an `(x, y)` tuple of arrays or a finite `tf.data.Dataset` of
            `(x, y)` batches.
        ordered: whether the order of a dataset's examples counts; when
            not, the per-example digests are sorted.

    Raises:
        UnhashableDataError: any other kind of data.
    """
    if isinstance(data, tuple) and len(data) == 2:
        digest = hashlib.sha256(b"arrays")
        _update(digest, data)
        return digest.hexdigest(), len(data[1])
    if not _inputs.is_tf_dataset(data):
        raise UnhashableDataError(
            f"{type(data).__name__} data cannot be read without side effects;"
            " only (x, y) arrays and tf.data pipelines are hashed"
        )
    if int(data.cardinality()) == -1:
        raise UnhashableDataError("the tf.data pipeline repeats forever")
    examples = []
    for batch in data.as_numpy_iterator():
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise UnhashableDataError("the pipeline does not yield (x, y)")
        for index in range(len(batch[1])):
            digest = hashlib.sha256()
            _update(digest, _example(tuple(batch), index))
            examples.append(digest.digest())
    digest = hashlib.sha256(b"ordered" if ordered else b"unordered")
    for example in examples if ordered else sorted(examples):
        digest.update(example)
    return digest.hexdigest(), len(examples)


def entry_key(model_hex, data_hex):
    """The entry key: sha256 hex over the format, Keras version, backend,
    model digest and data digest."""
    text = json.dumps({
        "format": FORMAT_VERSION,
        "keras": keras.__version__,
        "backend": keras.config.backend(),
        "model": model_hex,
        "data": data_hex,
    }, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class FeatureStore:
    """Feature entries in one directory, looked up before computing.

    Args:
        directory: where entries are kept; created on the first write.
        feature_model: the feature extractor (inputs -> `pooler`).
        summary: extra fields for each entry's JSON sidecar (the backbone
            name). Defaults to `None`.
    """

    def __init__(self, directory, feature_model, summary=None):
        self.directory = os.path.expanduser(os.fspath(directory))
        self.feature_model = feature_model
        self.summary = dict(summary or {})
        self.feature_shape = tuple(feature_model.output.shape[1:])
        self.entries = {}
        self.hash_seconds = 0.0
        self.load_seconds = 0.0
        self.store_seconds = 0.0
        self._model_hex = None

    def path(self, key):
        return os.path.join(self.directory, f"{key}.npz")

    def features(self, data, role, compute, *, ordered):
        """`(features, labels)` of `data`: the stored entry when one
        matches, else `compute()`, then stored.

        Args:
            data: the stage's data for `role`.
            role: `"train"` or `"validation"`, for the record and sidecar.
            compute: returns `(features, labels)` when there is no entry.
            ordered: whether the order of a dataset's examples counts.
        """
        ordered = ordered or isinstance(data, tuple)  # arrays keep order
        started = time.perf_counter()
        try:
            if self._model_hex is None:
                self._model_hex = model_digest(self.feature_model)
            data_hex, count = data_digest(data, ordered=ordered)
        except Exception as e:  # never fail a run for want of a key
            self.hash_seconds += time.perf_counter() - started
            reason = str(e) if isinstance(e, UnhashableDataError) else (
                f"cannot hash it ({type(e).__name__}: {e})")
            logger.info("No disk entry for the %s features: %s.", role, reason)
            self.entries[role] = {"status": f"off: {reason}", "key": None}
            return compute()
        key = entry_key(self._model_hex, data_hex)
        self.hash_seconds += time.perf_counter() - started
        started = time.perf_counter()
        loaded, problem = self._load(key, count)
        self.load_seconds += time.perf_counter() - started
        if loaded is not None:
            self.entries[role] = {"status": "hit", "key": key}
            return loaded
        entry = {"status": "miss", "key": key}
        if problem is not None:
            logger.warning(
                "Feature cache entry %s is unusable (%s); computing the "
                "features again and replacing it.", self.path(key), problem,
            )
            entry["replaced"] = problem
        self.entries[role] = entry
        features, labels = compute()
        started = time.perf_counter()
        self._store(key, features, labels, role, ordered)
        self.store_seconds += time.perf_counter() - started
        return features, labels

    def _load(self, key, count):
        """`((features, labels), None)`, or `(None, problem)`; `problem`
        is `None` when there is no entry."""
        path = self.path(key)
        if not os.path.exists(path):
            return None, None
        try:
            with np.load(path, allow_pickle=False) as entry:
                stored_key = str(entry["key"])
                features, labels = entry["features"], entry["labels"]
        except Exception as e:  # zip, CRC, truncation, missing arrays
            return None, f"{type(e).__name__}: {e}"
        if stored_key != key:
            return None, f"it holds key {stored_key!r}"
        if (features.shape[1:] != self.feature_shape or len(features) != count
                or len(labels) != count
                or not np.issubdtype(features.dtype, np.floating)):
            return None, (
                f"features {features.dtype}{features.shape} and labels "
                f"{labels.shape}, expected {count} vectors of shape "
                f"{self.feature_shape}"
            )
        return (features, labels), None

    def _store(self, key, features, labels, role, ordered):
        features, labels = np.asarray(features), np.asarray(labels)
        if features.dtype.kind != "f":
            # bfloat16 (mixed precision) has no portable .npy form; the
            # head's input is float32 either way.
            features = features.astype("float32")
        sidecar = {
            **self.summary,
            "key": key,
            "role": role,
            "examples": int(len(features)),
            "feature_shape": list(features.shape[1:]),
            "feature_dtype": str(features.dtype),
            "label_shape": list(labels.shape[1:]),
            "label_dtype": str(labels.dtype),
            "ordered": ordered,
            "keras": keras.__version__,
            "backend": keras.config.backend(),
            "created": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"),
        }
        text = json.dumps(sidecar, indent=2) + "\n"
        try:
            atomic_write(self.path(key), lambda f: np.savez(
                f, features=features, labels=labels, key=np.array(key)))
            atomic_write(os.path.join(self.directory, f"{key}.json"),
                         lambda f: f.write(text), mode="w")
        except OSError as e:
            logger.warning(
                "Could not store features in %s (%s); the run goes on "
                "without the disk cache.", self.directory, e,
            )
            self.entries[role]["status"] = f"miss (not stored: {e})"

    def to_dict(self):
        """The record for `manifest.json`: `disk` ("hit" when every keyed
        entry was found, "miss" when one was computed, else why the
        training data had no key),
        the training entry's `key`, per-entry details and seconds."""
        train = self.entries.get("train", {})
        if train.get("key") is None:
            disk = train.get("status", "off")
        elif any(entry["status"] != "hit" for entry in self.entries.values()
                 if entry["key"] is not None):
            disk = "miss"
        else:
            disk = "hit"
        return {
            "disk": disk,
            "key": train.get("key"),
            "directory": os.path.abspath(self.directory),
            "disk_entries": self.entries,
            "hash_seconds": round(self.hash_seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "store_seconds": round(self.store_seconds, 3),
        }
