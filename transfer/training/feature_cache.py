"""Feature caching: train a head-only stage on precomputed features.

When a stage trains only the head (`trainable_blocks=0`, so no backbone
weight changes) and nothing random runs before the head, every epoch of
the naive loop computes the very same backbone features again. Here they
are computed once, in inference mode, by the feature sub-model (inputs to
`pooler`) at a larger batch than training (`inference_batch_size`,
recorded), and the head (`head_dropout`,
`predictions`) trains on them as its own functional `keras.Model`. The head
model *shares* its layers with the classifier, so the classifier holds the
trained head weights at every moment, and the head model is compiled with
the classifier's own optimizer: `StageBackup`, the checkpoint, TensorBoard
and every other callback see the classifier and its optimizer, as in the
naive loop, and resume works unchanged. As only the head's weights change,
the stage's epoch backups hold those alone, over one file of the whole
model (`CachedHeadFit.head_weight_positions`,
`transfer.training.stage_state.StageState.back_up_only`; the manifest
record says `backups`).

Random augmentation must see new draws every epoch, so a stage falls back
to the naive loop when the training data or the model applies it:
`tf.data` pipelines are checked for random ops, a `keras.utils.PyDataset`
or generator cannot be checked and falls back under `"auto"`. The choice
and its reason go to the log and to each stage's record in
`manifest.json` (`feature_cache`). With a `cache_dir`, the features are
also kept on disk across runs (`transfer.training.feature_store`).
"""

import logging
import time

import keras
import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer import _model_info
from transfer.tensorboard.callbacks import ConfusionMatrixLogger
from transfer.training import feature_store
from transfer.training import stage_options

logger = logging.getLogger(__name__)

CACHE_FEATURES = (True, False, "auto")
# The feature pass's batch for arrays: this many training batches, capped
# (see `inference_batch_size` and `inference_batch_factor`).
INFERENCE_BATCH_FACTOR = 4
INFERENCE_BATCH_CAP = 256
_HEAD_LAYERS = ("head_dropout", "predictions")


def check_cache_features(cache_features):
    """Raises `ValueError` unless `cache_features` is True, False or "auto"."""
    if not (isinstance(cache_features, bool) or cache_features == "auto"):
        raise ValueError(
            "`cache_features` must be True, False or 'auto'. "
            f"Received: cache_features={cache_features!r}"
        )


def _head_layers(model):
    """The classifier's `pooler` and head layers, or `None`."""
    names = [layer.name for layer in model.layers]
    if "pooler" not in names or names[-1] != "predictions":
        return None
    after = names[names.index("pooler") + 1:]
    if any(name not in _HEAD_LAYERS for name in after):
        return None
    return model.get_layer("pooler"), [model.get_layer(n) for n in after]


def _random_layers(model):
    """Names of layers before the head that draw random numbers in
    training (augmentation, dropout); the backbone runs with
    `training=False` and is not searched."""
    try:
        backbone = _model_info.find_backbone(model)
    except ValueError:
        backbone = None
    found = []
    for layer in model.layers:
        if layer is backbone or layer.name in ("pooler",) + _HEAD_LAYERS:
            continue
        stack = [layer]
        while stack:
            current = stack.pop()
            if any(isinstance(v, keras.random.SeedGenerator)
                   for v in vars(current).values()):
                found.append(current.name)
            stack.extend(getattr(current, "layers", []))
    return found


def _dataset_ops(data):
    """The op names of a `tf.data.Dataset`'s graph, or `None`."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    if not isinstance(data, tf.data.Dataset):
        return None
    graph = tf.compat.v1.GraphDef()
    try:
        # The graph holds `from_tensor_slices` arrays: over 2 GB it cannot
        # be serialized, and the data then counts as uninspectable.
        graph.ParseFromString(data._as_serialized_graph().numpy())
    except Exception as e:  # noqa: BLE001 (any failure: cannot tell)
        logger.debug("Cannot inspect the tf.data graph: %s", e)
        return None
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def dataset_is_random(data):
    """Whether `data` applies random ops, `None` when it cannot be told.

    A `(x, y)` tuple of arrays is fixed. A `tf.data.Dataset` is searched
    for random ops (Keras augmentation layers, `tf.image.random_*`);
    shuffling does not count, cached features are reshuffled each epoch.
    """
    if isinstance(data, tuple):
        return False
    ops = _dataset_ops(data)
    if ops is None:
        return None
    return any("Random" in op and "Dataset" not in op for op in ops)


def _shuffles(data):
    """Whether the head should see the cached features reshuffled every
    epoch: as `fit` does with arrays, and as a `tf.data` pipeline does when
    it holds a shuffle. A pipeline without one keeps its order, so a
    resumed run sees the batches an uninterrupted one would."""
    ops = _dataset_ops(data)
    if ops is None:
        return True
    return any("Shuffle" in op for op in ops)


def plan_cache(model, stage, train_data, cache_features, *,
               task="classification", distributed="none"):
    """Decides whether `stage` trains on cached features.

    Returns:
        `(use, reason)`: a bool and a sentence for the log and manifest.
    """
    if cache_features is False:
        return False, "off (cache_features=False)"
    if distributed not in (None, "none"):
        # The engine splits every batch over its devices; the cached head
        # fit would run outside that split.
        return False, f"off: distributed run ({distributed})"
    if task != "classification" or getattr(model, "self_supervised", False):
        return False, f"off: a {task} model"
    # These options act on the stage's batches and loss, which the cached
    # head fit does not see.
    stage_changes = [
        name for name in ("augment", "label_smoothing", "class_weight",
                          "patience")
        if getattr(stage, name, None)
    ]
    if stage_options.one_hot_labels(stage) and not stage_changes:
        stage_changes = ["one-hot labels (loss or monitor)"]
    if stage_changes:
        return False, f"off: the stage sets {', '.join(stage_changes)}"
    if stage.trainable_blocks != 0:
        return False, (
            f"off: the stage trains backbone blocks (trainable_blocks="
            f"{stage.trainable_blocks!r})"
        )
    found = _head_layers(model)
    if found is None:
        return False, (
            "off: the model has no 'pooler' -> 'predictions' head (a "
            "transfer.build_classifier model)"
        )
    pooler, head = found
    head_weights = {id(w) for layer in head for w in layer.trainable_weights}
    others = [w.path for w in model.trainable_weights
              if id(w) not in head_weights]
    if others:
        return False, f"off: weights outside the head train ({others[0]}, ...)"
    random_layers = _random_layers(model)
    if random_layers:
        return False, (
            "off: random layers run before the head in training "
            f"({', '.join(random_layers)}); features change every epoch"
        )
    if isinstance(train_data, tuple) and len(train_data) != 2:
        return False, "off: training data is not an (x, y) pair"
    random = dataset_is_random(train_data)
    if random and cache_features == "auto":
        return False, (
            "off: the training data applies random augmentation, which "
            "must draw anew every epoch (pass cache_features=True to cache "
            "one augmented copy)"
        )
    if random is None and cache_features == "auto":
        return False, (
            f"off: cannot tell whether {type(train_data).__name__} data is "
            "augmented (pass cache_features=True to cache it anyway)"
        )
    if random:
        return True, "on (cache_features=True): one augmented copy cached"
    return True, "on: backbone frozen, no random augmentation"


def inference_batch_factor():
    """How many training batches one batch of the feature pass holds.

    `INFERENCE_BATCH_FACTOR` (4) on TensorFlow and on accelerators; 1 for
    JAX and torch on a CPU, where a larger batch ran *slower*: the
    EfficientNet-Lite0 feature model at 128 px on 2 CPU cores, images/s
    at batch 32 / 64 / 125 / 250 (`predict_on_batch`, warm): TensorFlow
    280 / 307 / 314 / 310, JAX 184-218 / 173-199 / 162-167 / 134-147,
    torch 140-144 / 102-118 / 95-104 / 92-94 (benchmarks/README.md,
    "The feature pass's batch").
    """
    name = _backend.backend()
    if name in ("jax", "torch") and _backend.accelerator() == "cpu":
        return 1
    return INFERENCE_BATCH_FACTOR


def inference_batch_size(data, batch_size, factor=None):
    """The batch size of the feature pass over `data`.

    Inference keeps no activations for a backward pass, so it can run at
    a larger batch than training: for `(x, y)` arrays about `factor` times
    the training batch (default `inference_batch_factor()`; at most
    `INFERENCE_BATCH_CAP`, never less than the training batch), spread
    evenly over the examples so that the last batch is (nearly) full.
    Datasets keep their own batches: `None`.

    Example:

    >>> x = np.zeros((1000, 2))
    >>> inference_batch_size((x, np.zeros(1000)), 32, factor=4)  # 8 of 125
    125
    >>> inference_batch_size((x, np.zeros(1000)), 32, factor=1)  # 32 of 32
    32
    >>> inference_batch_size((x[:16], np.zeros(16)), 8, factor=4)
    16
    """
    if not isinstance(data, tuple):
        return None
    if factor is None:
        factor = inference_batch_factor()
    count = _inputs.num_samples(data[0])
    largest = max(int(batch_size), min(
        int(factor) * int(batch_size), INFERENCE_BATCH_CAP))
    batches = max(1, -(-count // largest))
    return max(1, -(-count // batches))


def _padded(images, size):
    """`images` with its last example repeated up to `size` rows, so that a
    short last batch runs the function traced for the full ones (a new
    shape would trace, or compile under XLA and JAX, once more). Other
    inputs (text, nested) are returned as they are."""
    if (not isinstance(images, np.ndarray) or len(images) >= size
            or len(images) == 0 or images.dtype.kind not in "fiub"):
        return images
    extra = np.repeat(images[-1:], size - len(images), axis=0)
    return np.concatenate([images, extra])


def _features(feature_model, data, batch_size, verbose=0):
    """Backbone features and labels of every example of `data`.

    Batch by batch with the compiled `predict_on_batch` (inference mode):
    `predict` on arrays would draw from the global RNG on torch (its
    `DataLoader`), and the head's shuffles would then differ between a run
    that computes the features and one that loads them from disk. Arrays
    are read at `inference_batch_size`; a batch shorter than the first is
    padded to its size (`_padded`), and the padding's features dropped.
    One streaming pass: memory holds the features and the batch being
    read, not the images. `verbose` `1` shows a `keras.utils.Progbar` of
    batches."""
    batch_size = inference_batch_size(data, batch_size) or batch_size
    progress = keras.utils.Progbar(
        _inputs.steps_per_epoch(data, batch_size), verbose=verbose,
        unit_name="batch",
    )
    features, labels = [], []
    full = None
    for images, batch_labels in _inputs.iterate_batches(data, batch_size):
        count = len(batch_labels)
        full = full or count
        outputs = feature_model.predict_on_batch(_padded(images, full))
        features.append(np.asarray(outputs)[:count])
        labels.append(batch_labels)
        progress.add(1)
    return np.concatenate(features), np.concatenate(labels)


def _store(cache_dir, model, feature_model):
    """A `FeatureStore` for `model`'s features in `cache_dir`."""
    try:
        backbone = _model_info.find_backbone(model).name
    except ValueError:
        backbone = None
    return feature_store.FeatureStore(
        cache_dir, feature_model, summary={"backbone": backbone}
    )


class _StopBridge(keras.callbacks.Callback):
    """Passes `stop_training` set on the classifier (by `TerminateOnNaN`,
    `StageBackup`, `EarlyStopping`) to the head model that trains."""

    def __init__(self, classifier, head_model):
        super().__init__()
        self.classifier = classifier
        self.head_model = head_model

    def set_model(self, model):
        super().set_model(self.classifier)

    def _bridge(self, *args, **kwargs):
        if self.classifier.stop_training:
            self.head_model.stop_training = True

    on_train_batch_end = _bridge
    on_epoch_end = _bridge


class CachedHeadFit:
    """Computes a classifier's features once and fits its head on them.

    Args:
        model: the classifier, compiled (its optimizer is shared).
        train_data: the stage's training data.
        validation_data: validation data, or `None`.
        batch_size: batch size for array data.
        cache_dir: a directory of features kept across runs
            (`transfer.training.feature_store`), or `None`. Defaults to `None`.
        verbose: `1` (or `"auto"`) shows a progress bar while the features
            are computed, `0` nothing. Defaults to `0`.
    """

    def __init__(self, model, train_data, validation_data, batch_size,
                 cache_dir=None, verbose=0):
        pooler, head = _head_layers(model)
        self.model = model
        # The feature pass shows progress as `fit` does ("auto" is 1).
        self.verbose = 1 if verbose == "auto" else int(verbose)
        started = time.perf_counter()
        self.compute_seconds = 0.0
        feature_model = keras.Model(
            model.inputs, pooler.output, name="feature_extractor"
        )
        self.store = None if cache_dir is None else _store(
            cache_dir, model, feature_model
        )
        self.shuffle = _shuffles(train_data)
        self.train = self._features(
            feature_model, train_data, batch_size, "train", self.shuffle
        )
        self.validation = (
            None if validation_data is None
            else self._features(
                feature_model, validation_data, batch_size, "validation",
                _shuffles(validation_data),
            )
        )
        self.batch_size = _inputs.first_batch_size(train_data, batch_size)
        # The feature pass's batch: larger than training's for arrays.
        self.inference_batch_size = (
            inference_batch_size(train_data, batch_size) or self.batch_size)
        self.seconds = time.perf_counter() - started
        inputs = keras.Input(self.train[0].shape[1:], name="features")
        x = inputs
        for layer in head:
            x = layer(x)
        self.head_model = keras.Model(inputs, x, name="cached_head")
        self.head_model.compile(
            optimizer=model.optimizer,
            loss=model.loss,
            metrics=["accuracy"],
        )
        logger.info(
            "Cached %d training%s feature vectors of size %d in %.1f s.",
            len(self.train[0]),
            "" if self.validation is None
            else f" and {len(self.validation[0])} validation",
            self.train[0].shape[-1], self.seconds,
        )
        if self.store is not None:
            record = self.store.to_dict()
            logger.info(
                "Feature cache on disk (%s): %s, key %s; %.2f s hashing, "
                "%.2f s loading, %.2f s computing, %.2f s storing.",
                record["directory"], record["disk"], record["key"],
                record["hash_seconds"], record["load_seconds"],
                self.compute_seconds, record["store_seconds"],
            )

    def _features(self, feature_model, data, batch_size, role, shuffles):
        """Features of `data`, from the disk cache when it has them."""

        def compute():
            started = time.perf_counter()
            result = _features(feature_model, data, batch_size,
                               verbose=self.verbose)
            self.compute_seconds += time.perf_counter() - started
            return result

        if self.store is None:
            return compute()
        if dataset_is_random(data):
            # The hashing pass and the computing pass would draw different
            # augmentations: no key describes the features.
            self.store.entries[role] = {
                "status": "off: the data applies random augmentation",
                "key": None,
            }
            return compute()
        return self.store.features(data, role, compute, ordered=not shuffles)

    def head_weight_positions(self):
        """Positions in the classifier's `weights` of the head's weights:
        the only ones the cached fit changes (the backbone does not run)."""
        head = {id(w) for w in self.head_model.weights}
        return [i for i, w in enumerate(self.model.weights) if id(w) in head]

    def to_dict(self):
        record = {
            "train_samples": int(len(self.train[0])),
            "validation_samples": (
                None if self.validation is None
                else int(len(self.validation[0]))
            ),
            "feature_shape": list(self.train[0].shape[1:]),
            "seconds": round(self.seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "shuffle": self.shuffle,
            "inference_batch_size": self.inference_batch_size,
        }
        if self.store is None:
            record["disk"] = "off"
        else:
            record.update(self.store.to_dict())
        return record

    def fit(self, *, initial_epoch, epochs, callbacks, verbose):
        """`fit` of the head model; `callbacks` see the classifier, except
        `ConfusionMatrixLogger`, which reads the cached validation
        features through the head model."""
        verbose = 1 if verbose == "auto" else verbose
        steps = int(np.ceil(len(self.train[0]) / self.batch_size))
        for callback in callbacks:
            if (isinstance(callback, ConfusionMatrixLogger)
                    and self.validation is not None):
                callback.validation_data = self.validation
        # Keras's `fit` returns `self.history` of the model it trains.
        history = keras.callbacks.History()
        self.head_model.history = history
        callback_list = keras.callbacks.CallbackList(
            list(callbacks)
            + [_StopBridge(self.model, self.head_model), history],
            add_history=True, add_progbar=verbose != 0,
            model=self.model, verbose=verbose, epochs=epochs, steps=steps,
        )
        for callback in callbacks:
            if isinstance(callback, ConfusionMatrixLogger):
                callback.set_model(self.head_model)
        self.model.stop_training = False
        x, y = self.train
        stage_options.build_before_fit(self.head_model, x, y)
        return self.head_model.fit(
            x, y, batch_size=self.batch_size, shuffle=self.shuffle,
            validation_data=self.validation,
            initial_epoch=initial_epoch, epochs=epochs,
            callbacks=callback_list, verbose=verbose,
        )
