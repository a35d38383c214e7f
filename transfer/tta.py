"""Test-time augmentation: average a model's outputs over flipped views."""

import keras
import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer import _model_info

FLIPS = ("horizontal", "vertical")


def _check_flips(flips):
    flips = tuple(flips)
    unknown = [f for f in flips if f not in FLIPS]
    if unknown or len(set(flips)) != len(flips):
        raise ValueError(
            f"`flips` must hold distinct names from {FLIPS}. "
            f"Received: flips={flips!r}"
        )
    return flips


def _views(model, images, flips):
    """The model's outputs for the images and each flip (probabilities for
    classifiers with logits), original view first."""
    images = keras.ops.convert_to_numpy(images)
    views = [images]
    if "horizontal" in flips:
        views.append(images[:, :, ::-1])
    if "vertical" in flips:
        views.append(images[:, ::-1])
    softmax = _model_info.model_task(model) == "classification" and _model_info.is_logits(model)
    # One compiled call for all views.
    out = np.asarray(_backend.predict_on_batch(model, np.concatenate(views)))
    if softmax:
        out = keras.ops.convert_to_numpy(keras.ops.softmax(out, axis=-1))
    return np.split(out, len(views))


def _outputs(model, images, flips):
    return np.mean(_views(model, images, flips), axis=0)


def predict_tta(model, x, *, flips=("horizontal",), batch_size=32):
    """Predictions averaged over the images and their flips.

    Classifiers that output logits are averaged as probabilities (softmax
    first); multi-label and regression outputs are averaged as they are.

    Args:
        model: an image `keras.Model` from `transfer`.
        x: images `(n, height, width, 3)`, or a dataset of `(x, y)` or `x`
            batches.
        flips: views added to the original, from `"horizontal"` and
            `"vertical"`. Defaults to `("horizontal",)`.
        batch_size: batch size for array input. Defaults to `32`.

    Returns:
        A NumPy array of averaged outputs (probabilities for classifiers).

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, _ = transfer.synthetic_images(4, 32, 2)
    >>> probabilities = transfer.predict_tta(
    ...     model, x, flips=("horizontal", "vertical"))
    >>> probabilities.shape
    (4, 2)
    >>> np.allclose(probabilities.sum(axis=1), 1.0)
    True
    """
    flips = _check_flips(flips)
    if isinstance(x, np.ndarray):
        batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    else:
        batches = (b[0] if isinstance(b, (tuple, list)) else b for b in x)
    return np.concatenate([_outputs(model, b, flips) for b in batches])


def evaluate_tta(model, data, *, flips=("horizontal",), batch_size=32):
    """Metrics of `predict_tta` on labelled data, with and without TTA.

    Args:
        model: an image `keras.Model` from `transfer`.
        data: an `(x, y)` tuple of arrays or a finite dataset of `(x, y)`
            batches.
        flips: as in `predict_tta`. Defaults to `("horizontal",)`.
        batch_size: batch size for array data. Defaults to `32`.

    Returns:
        A dict: `accuracy` and `accuracy_without_tta` for classifiers
        (multi-label: per-label accuracy at the model's thresholds), or
        `mae` and `mae_without_tta` for regressors.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, y = transfer.synthetic_images(8, 32, 2)
    >>> metrics = transfer.evaluate_tta(model, (x, y))
    >>> sorted(metrics)
    ['accuracy', 'accuracy_without_tta']
    >>> 0.0 <= metrics["accuracy"] <= 1.0
    True
    """

    flips = _check_flips(flips)
    task = _model_info.model_task(model)
    with_tta, plain, targets = [], [], []
    for x, y in _inputs.iterate_batches(data, batch_size):
        views = _views(model, x, flips)
        with_tta.append(np.mean(views, axis=0))
        plain.append(views[0])
        targets.append(keras.ops.convert_to_numpy(y))
    targets = np.concatenate(targets)
    results = {}
    for suffix, outputs in (("", with_tta), ("_without_tta", plain)):
        outputs = np.concatenate(outputs)
        if task == "regression":
            error = np.abs(outputs - targets.reshape(outputs.shape))
            results["mae" + suffix] = float(error.mean())
        elif task == "multilabel":
            metadata = getattr(model, "transfer_metadata", None) or {}
            thresholds = np.asarray(metadata.get("thresholds") or 0.5)
            correct = (outputs >= thresholds) == targets.astype(bool)
            results["accuracy" + suffix] = float(correct.mean())
        else:
            correct = outputs.argmax(-1) == targets.reshape(-1)
            results["accuracy" + suffix] = float(correct.mean())
    return results
