"""Heads beyond single-label classification: multi-label and regression.

`build_multilabel_classifier` ends in `num_labels` sigmoid units (binary
cross-entropy, binary accuracy, AUC and F1 when `fit_recipe` compiles it);
`build_regressor` ends in linear units (mean squared error, with MAE and
RMSE). Both are plain `keras.Model`s built by `transfer.build_classifier`
with another `predictions` layer, and record their task in
`model.transfer_metadata["task"]`, which `fit_recipe` reads.
"""

import logging
import warnings

import keras
import numpy as np

from transfer import _inputs
from transfer import _model_info
from transfer.models.classifier import build_classifier

logger = logging.getLogger(__name__)


def build_multilabel_classifier(backbone, num_labels, *, weights="imagenet",
                                image_size=None, dropout=0.2):
    """An image model with one sigmoid output per label (multi-label).

    Use it when an image can carry several labels at once (or none). Train
    it with `transfer.fit_recipe` on targets shaped `(n, num_labels)` of 0
    and 1 (see `transfer.load_image_table`); with validation data,
    `fit_recipe` then picks one threshold per label
    (`choose_thresholds`), stored in `model.transfer_metadata`.

    Args:
        backbone: a registered backbone name or `BackboneSpec`.
        num_labels: number of labels, at least 2.
        weights: `"imagenet"`, `None` or a weights file.
            Defaults to `"imagenet"`.
        image_size: input size. Defaults to the backbone's.
        dropout: dropout rate before the head. Defaults to `0.2`.

    Returns:
        A `keras.Model` whose outputs are per-label probabilities.

    Example:

    >>> model = transfer.build_multilabel_classifier(
    ...     "small_cnn", 4, weights=None, image_size=32)
    >>> model.output_shape
    (None, 4)
    >>> model.transfer_metadata["task"]
    'multilabel'
    >>> x, _ = transfer.synthetic_images(2, 32)
    >>> scores = model.predict(x, verbose=0)
    >>> bool(((scores >= 0) & (scores <= 1)).all())  # sigmoid outputs
    True
    """
    model = build_classifier(backbone, num_labels, weights=weights,
                             image_size=image_size, dropout=dropout,
                             activation="sigmoid")
    model.transfer_metadata["task"] = "multilabel"
    return model


def build_regressor(backbone, num_outputs=1, *, weights="imagenet",
                    image_size=None, dropout=0.2):
    """An image model with linear outputs, for numeric targets.

    Trained by `transfer.fit_recipe` with mean squared error; the best
    checkpoint is the lowest validation loss.

    Args:
        backbone: a registered backbone name or `BackboneSpec`.
        num_outputs: number of numeric targets. Defaults to `1`.
        weights: `"imagenet"`, `None` or a weights file.
            Defaults to `"imagenet"`.
        image_size: input size. Defaults to the backbone's.
        dropout: dropout rate before the head. Defaults to `0.2`.

    Returns:
        A `keras.Model` with `num_outputs` linear outputs.

    Example:

    >>> model = transfer.build_regressor(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> model.output_shape
    (None, 2)
    >>> model.transfer_metadata["task"]
    'regression'
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or (
        num_outputs < 1
    ):
        raise ValueError(
            "`num_outputs` must be a positive integer. "
            f"Received: num_outputs={num_outputs!r}"
        )
    base = build_classifier(backbone, 2, weights=weights,
                            image_size=image_size, dropout=dropout)
    outputs = keras.layers.Dense(
        num_outputs, name="predictions", dtype="float32"
    )(base.get_layer("head_dropout").output)
    model = keras.Model(base.inputs, outputs,
                        name=base.name.replace("_classifier", "_regressor"))
    model.transfer_metadata = dict(base.transfer_metadata,
                                   task="regression", num_classes=num_outputs)
    return model


def _targets(data):
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[1])

    return np.concatenate([
        keras.ops.convert_to_numpy(y) for _, y in _inputs.iterate_batches(data)
    ])


def check_targets(data, model, what):
    """Checks multi-label or regression targets before training.

    Multi-label targets must be `(n, num_labels)` of 0/1; rows without any
    positive label get a warning with their count. Regression targets must
    be finite numbers, `(n,)` or `(n, num_outputs)`.

    Raises:
        ValueError: wrong shape or values, naming what was received.
    """

    task = _model_info.model_task(model)
    width = model.output_shape[-1]
    y = _targets(data).astype("float64")
    if task == "regression":
        if y.ndim == 1 and width == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != width or not np.all(np.isfinite(y)):
            raise ValueError(
                f"{what} targets of a regressor with {width} output(s) must "
                f"be finite numbers shaped (n, {width}). Received: shape "
                f"{y.shape}, {int(np.sum(~np.isfinite(y)))} non-finite"
            )
        return
    if y.ndim != 2 or y.shape[1] != width:
        raise ValueError(
            f"{what} targets of a multi-label model with {width} labels "
            f"must be shaped (n, {width}). Received: shape {y.shape}"
        )
    bad = np.unique(y[(y != 0) & (y != 1)])
    if bad.size:
        raise ValueError(
            f"{what} multi-label targets must be 0 or 1. "
            f"Received: values {bad[:5].tolist()}"
        )
    empty = int(np.sum(y.sum(axis=1) == 0))
    if empty:
        warnings.warn(
            f"{what} data: {empty} of {len(y)} rows have no positive label.",
            stacklevel=3,
        )


def choose_thresholds(model, data):
    """Per-label decision thresholds that maximise F1 on `data`.

    Candidates are 0.05 to 0.95 in steps of 0.05; a label with no positive
    example in `data` keeps 0.5.

    Args:
        model: a model from `build_multilabel_classifier`.
        data: labelled validation data: an `(x, y)` tuple of arrays with
            `y` of 0/1 shaped `(n, num_labels)`, or a finite dataset of
            `(x, y)` batches.

    Returns:
        A list of `num_labels` floats.

    Example:

    >>> model = transfer.build_multilabel_classifier(
    ...     "small_cnn", 3, weights=None, image_size=32)
    >>> x, _ = transfer.synthetic_images(16, 32)
    >>> y = np.random.default_rng(0).integers(0, 2, (16, 3))
    >>> y[:, 2] = 0  # no positive example of label 2: it keeps 0.5
    >>> thresholds = transfer.choose_thresholds(model, (x, y))
    >>> len(thresholds), thresholds[2]
    (3, 0.5)
    """

    scores, targets = [], []
    for x, y in _inputs.iterate_batches(data):
        scores.append(keras.ops.convert_to_numpy(model(x, training=False)))
        targets.append(keras.ops.convert_to_numpy(y))
    scores = np.concatenate(scores)
    targets = np.concatenate(targets).astype(bool)
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 2)
    thresholds = []
    for label in range(targets.shape[1]):
        truth = targets[:, label]
        if not truth.any():
            thresholds.append(0.5)
            continue
        predicted = scores[:, label][None, :] >= candidates[:, None]
        tp = (predicted & truth).sum(axis=1)
        f1 = 2 * tp / (predicted.sum(axis=1) + truth.sum())
        thresholds.append(float(candidates[int(np.argmax(f1))]))
    return thresholds


def predict_labels(model, x, *, thresholds=None, batch_size=32):
    """0/1 label predictions of a multi-label model.

    Args:
        model: a model from `build_multilabel_classifier`.
        x: images.
        thresholds: per-label thresholds. Defaults to `None`: those
            `fit_recipe` chose (`model.transfer_metadata["thresholds"]`),
            else 0.5.
        batch_size: batch size. Defaults to `32`.

    Returns:
        An `int32` array `(n, num_labels)`.

    Example:

    >>> model = transfer.build_multilabel_classifier(
    ...     "small_cnn", 3, weights=None, image_size=32)
    >>> x, _ = transfer.synthetic_images(4, 32)
    >>> labels = transfer.predict_labels(model, x, thresholds=[0.5, 0.5, 0.5])
    >>> labels.shape, labels.dtype.name
    ((4, 3), 'int32')
    >>> bool(np.isin(labels, [0, 1]).all())
    True
    """
    if thresholds is None:
        metadata = getattr(model, "transfer_metadata", None) or {}
        thresholds = metadata.get("thresholds") or 0.5
    scores = model.predict(x, batch_size=batch_size, verbose=0)
    return (scores >= np.asarray(thresholds)).astype("int32")
