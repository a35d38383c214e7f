"""A report for people who don't open TensorBoard: PNGs and metrics.json.

`write_report` writes `training_curves.png`, `confusion_matrix.png` and
`metrics.json` (per-class precision, recall and F1, from scikit-learn).
The evaluation helpers here also feed the image callbacks in
`transfer.tensorboard.callbacks`.
"""

import collections
import heapq
import logging
import os

import numpy as np

from transfer import _backend
from transfer import _inputs
from transfer._io import write_json
from transfer.reporting import plots

logger = logging.getLogger(__name__)


def _as_probabilities(outputs):
    """Softmax of logits; outputs that already are probabilities pass."""
    outputs = np.asarray(outputs, dtype="float64")
    if np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-3):
        return outputs
    shifted = outputs - outputs.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def predict_batches(model, data, batch_size=32):
    """Yields `(images, labels, probabilities)` NumPy batches.

    Labels may be class indices or one-hot rows; they come out as indices.
    Model outputs that are logits are turned into probabilities.
    """
    for images, labels in _inputs.iterate_batches(data, batch_size):
        if labels.ndim == 2 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)
        outputs = _backend.predict_on_batch(model, images)
        yield images, labels.reshape(-1).astype("int64"), _as_probabilities(
            outputs
        )


def first_images(data, max_images):
    """Up to `max_images` images of the first batch `data` yields.

    For an `(x, y)` tuple of arrays: the first `max_images` of `x`.
    """
    if isinstance(data, tuple) and len(data) == 2:
        return np.asarray(data[0][:max_images])
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        batch = data[0]
    else:
        batch = next(iter(data))
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return np.asarray(images)[:max_images]


TopLosses = collections.namedtuple(
    "TopLosses", ["images", "labels", "probabilities", "losses", "indices"]
)


def top_losses(model, data, num_images, batch_size=32):
    """The `num_images` examples with the highest cross-entropy, worst first.

    Keeps only those examples in memory while it goes through `data`.

    Returns:
        A `TopLosses` of NumPy arrays `(images, labels, probabilities,
        losses, indices)`, `indices` being each example's position in
        `data` (as `file_paths[i]` of data read in a fixed order names its
        file), or `None` when `data` is empty.
    """
    heap = []  # (loss, order, image, label, probabilities), smallest first
    order = 0
    for images, labels, probabilities in predict_batches(
        model, data, batch_size
    ):
        true = probabilities[np.arange(len(labels)), labels]
        losses = -np.log(np.maximum(true, 1e-12))
        for i in range(len(labels)):
            item = (float(losses[i]), order, images[i], labels[i],
                    probabilities[i])
            order += 1
            if len(heap) < num_images:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)
    if not heap:
        return None
    worst = sorted(heap, key=lambda item: (-item[0], item[1]))
    losses, indices, images, labels, probabilities = zip(*worst, strict=True)
    return TopLosses(np.stack(images), np.array(labels),
                     np.stack(probabilities), np.array(losses),
                     np.array(indices))


def class_names_for(model, class_names):
    """`class_names` checked against the model's outputs, or `"0"`, `"1"`..."""
    num_classes = int(model.output_shape[-1])
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    class_names = [str(n) for n in class_names]
    if len(class_names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} outputs but {len(class_names)} "
            f"class names were given. Received: class_names={class_names}"
        )
    return class_names


def evaluate_classes(model, data, class_names=None, batch_size=32):
    """Per-class precision, recall and F1 plus the confusion matrix.

    Returns:
        A JSON-ready dict: `num_examples`, `accuracy`, `per_class`
        (`precision`, `recall`, `f1`, `support` per class name),
        `macro_avg`, `weighted_avg`, `class_names`, `confusion_matrix`.
    """
    from sklearn.metrics import confusion_matrix
    from sklearn.metrics import precision_recall_fscore_support

    class_names = class_names_for(model, class_names)
    true, predicted = [], []
    for _, labels, probabilities in predict_batches(model, data, batch_size):
        true.append(labels)
        predicted.append(probabilities.argmax(-1))
    true = np.concatenate(true) if true else np.zeros(0, "int64")
    predicted = np.concatenate(predicted) if predicted else np.zeros(0, "int64")
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=labels, zero_division=0
    )
    result = {
        "num_examples": int(len(true)),
        "accuracy": float(np.mean(true == predicted)) if len(true) else None,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            true, predicted, labels=labels, average=average, zero_division=0
        )
        result[f"{average}_avg"] = {
            "precision": float(p), "recall": float(r), "f1": float(f)
        }
    result["class_names"] = class_names
    result["confusion_matrix"] = confusion_matrix(
        true, predicted, labels=labels
    ).tolist()
    return result


def write_report(
    report_dir,
    histories=None,
    *,
    stage_names=None,
    model=None,
    data=None,
    class_names=None,
    split="validation",
):
    """Writes PNG curves, a confusion-matrix PNG and `metrics.json`.

    `fit_recipe` calls it with the validation data, into `run_dir/report`.
    Call it yourself with test data after training (it overwrites).

    Args:
        report_dir: output directory, created if needed.
        histories: `keras.callbacks.History` objects, one per stage, for
            `training_curves.png`; `None` for no curves. Defaults to `None`.
        stage_names: names of the stages, to label the curves.
            Defaults to `None`.
        model: the trained classifier, to evaluate on `data`.
            Defaults to `None`.
        data: labelled evaluation data (as `iterate_batches` takes), or
            `None` for no confusion matrix or per-class metrics.
            Defaults to `None`.
        class_names: class names. Defaults to `None` (`"0"`, `"1"`, ...).
        split: what `data` is, recorded in `metrics.json`.
            Defaults to `"validation"`.

    Returns:
        The dict written to `metrics.json`.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> metrics = transfer.write_report(
    ...     "report", model=model, data=(x, y), class_names=["cat", "dog"])
    >>> sorted(metrics["per_class"]), metrics["num_examples"]
    (['cat', 'dog'], 16)
    >>> sorted(os.listdir("report"))
    ['confusion_matrix.png', 'metrics.json']
    """
    plots.require_matplotlib()
    os.makedirs(report_dir, exist_ok=True)
    metrics = {"split": None}
    if histories:
        figure = plots.training_curves_figure(histories, stage_names)
        figure.savefig(os.path.join(report_dir, "training_curves.png"))
        metrics["final_epoch"] = {
            key: float(values[-1])
            for key, values in histories[-1].history.items()
            if values
        }
    if model is not None and data is not None:
        evaluation = evaluate_classes(model, data, class_names)
        metrics["split"] = split
        metrics.update(evaluation)
        accuracy = evaluation["accuracy"] or 0.0
        figure = plots.confusion_matrix_figure(
            np.asarray(evaluation["confusion_matrix"]),
            evaluation["class_names"],
            title=f"Confusion matrix ({split})\naccuracy {accuracy:.3f}",
        )
        figure.savefig(os.path.join(report_dir, "confusion_matrix.png"))
    else:
        logger.info(
            "No evaluation data: %s has curves only, no per-class metrics.",
            report_dir,
        )
    write_json(os.path.join(report_dir, "metrics.json"), metrics)
    return metrics
