"""Evaluation in one pass over batches, in memory that does not grow.

`StreamingEvaluation` takes one batch of labels and class probabilities at
a time and keeps only what the report needs: the confusion matrix, the
summed cross-entropy and a bounded heap of the worst-classified examples
(their images, files and positions). Per-class precision, recall and F1
come from the confusion matrix, as scikit-learn computes them, so a folder
of a million images is evaluated in the memory of a few batches.
"""

import collections
import heapq

import numpy as np

TopLosses = collections.namedtuple(
    "TopLosses",
    ["images", "labels", "probabilities", "losses", "indices", "paths"],
    defaults=(None,),
)

# Probabilities are clipped here before the log, as `top_losses` always did.
_EPSILON = 1e-12


def as_probabilities(outputs):
    """Softmax of logits; outputs that already are probabilities pass.

    Example:

    >>> as_probabilities(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    outputs = np.asarray(outputs, dtype="float64")
    if np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-3):
        return outputs
    shifted = outputs - outputs.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def _ratio(numerator, denominator):
    """`numerator / denominator`, `0` where the denominator is `0`."""
    numerator = np.asarray(numerator, dtype="float64")
    denominator = np.asarray(denominator, dtype="float64")
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def classification_metrics(matrix, class_names):
    """Accuracy and per-class metrics of a confusion matrix.

    The same numbers as scikit-learn's `precision_recall_fscore_support`
    with `zero_division=0` on the labels the matrix counts.

    Args:
        matrix: `(n, n)` counts, rows true classes, columns predicted.
        class_names: the `n` class names.

    Returns:
        A JSON-ready dict: `num_examples`, `accuracy` (`None` without
        examples), `per_class` (`precision`, `recall`, `f1`, `support` per
        class name), `macro_avg`, `weighted_avg`, `class_names` and
        `confusion_matrix`.

    Example:

    >>> metrics = classification_metrics([[3, 1], [0, 4]], ["cat", "dog"])
    >>> metrics["accuracy"], metrics["per_class"]["cat"]["recall"]
    (0.875, 0.75)
    """
    matrix = np.asarray(matrix, dtype="int64")
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    total = int(support.sum())
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * true_positives, support + predicted)
    result = {
        "num_examples": total,
        "accuracy": float(true_positives.sum() / total) if total else None,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_avg": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
    }
    weights = _ratio(support, total)
    result["weighted_avg"] = {
        "precision": float((precision * weights).sum()),
        "recall": float((recall * weights).sum()),
        "f1": float((f1 * weights).sum()),
    }
    result["class_names"] = list(class_names)
    result["confusion_matrix"] = matrix.tolist()
    return result


class StreamingEvaluation:
    """Confusion matrix, loss and worst examples, one batch at a time.

    Use it to evaluate data too big to hold: call `update` with each
    batch's true classes and the model's outputs, then `result()` for the
    metrics and `worst()` for the worst-classified examples. Its memory is
    the confusion matrix plus `max_examples` examples, however many
    batches it sees. `transfer.write_report` and
    `transfer.run_report.write_run_report` evaluate through it.

    Args:
        class_names: the class names, one per model output.
        max_examples: how many worst-classified examples (highest
            cross-entropy, the earliest first among equal losses) to keep,
            with their images. `0` keeps none. Defaults to `8`.

    Example:

    >>> evaluation = StreamingEvaluation(["cat", "dog"], max_examples=1)
    >>> images = np.zeros((2, 4, 4, 3))
    >>> evaluation.update([0, 1], [[0.9, 0.1], [0.6, 0.4]], images,
    ...                   paths=["cat/a.png", "dog/b.png"])
    >>> evaluation.update([1], [[0.2, 0.8]], images[:1], paths=["dog/c.png"])
    >>> metrics = evaluation.result()
    >>> metrics["num_examples"], round(metrics["accuracy"], 3)
    (3, 0.667)
    >>> metrics["confusion_matrix"]
    [[1, 0], [1, 1]]
    >>> worst = evaluation.worst()
    >>> worst.paths, worst.indices.tolist()
    (['dog/b.png'], [1])
    """

    def __init__(self, class_names, *, max_examples=8):
        if isinstance(max_examples, bool) or not isinstance(
            max_examples, int
        ) or max_examples < 0:
            raise ValueError(
                "`max_examples` must be a non-negative integer (0 keeps no "
                f"examples). Received: max_examples={max_examples!r}"
            )
        self.class_names = [str(name) for name in class_names]
        self.max_examples = max_examples
        num_classes = len(self.class_names)
        self._matrix = np.zeros((num_classes, num_classes), dtype="int64")
        self._loss_sum = 0.0
        self._count = 0
        # (loss, -order, order, image, label, probabilities, path): the
        # smallest loss (and, among equals, the latest) is replaced first.
        self._heap = []

    @property
    def num_examples(self):
        """How many examples `update` has seen."""
        return self._count

    def update(self, labels, outputs, images=None, paths=None):
        """Adds one batch.

        Args:
            labels: true class indices `(k,)`, or one-hot rows `(k, n)`.
            outputs: the model's outputs `(k, n)`: probabilities, or logits
                (turned into probabilities by a softmax).
            images: the batch's inputs, kept for the worst examples, or
                `None`. Defaults to `None`.
            paths: each example's file, or `None`. Defaults to `None`.

        Raises:
            ValueError: the outputs do not have one column per class, or
                the labels, outputs and paths differ in length.
        """
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)
        labels = labels.reshape(-1).astype("int64")
        probabilities = as_probabilities(outputs)
        num_classes = len(self.class_names)
        if probabilities.ndim != 2 or probabilities.shape[-1] != num_classes:
            raise ValueError(
                f"Expected outputs with {num_classes} columns, one per class "
                f"{self.class_names}. Received: outputs of shape "
                f"{probabilities.shape}"
            )
        sizes = {len(labels), len(probabilities)}
        if paths is not None:
            sizes.add(len(paths))
        if len(sizes) > 1:
            raise ValueError(
                "labels, outputs and paths must have one entry per example. "
                f"Received: {len(labels)} labels, {len(probabilities)} "
                f"outputs, {'no' if paths is None else len(paths)} paths"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"Labels must be class indices below {num_classes}. "
                f"Received: labels={labels.tolist()}"
            )
        predicted = probabilities.argmax(-1)
        np.add.at(self._matrix, (labels, predicted), 1)
        true = probabilities[np.arange(len(labels)), labels]
        losses = -np.log(np.maximum(true, _EPSILON))
        self._loss_sum += float(losses.sum())
        start = self._count
        self._count += len(labels)
        if not self.max_examples:
            return
        for i in range(len(labels)):
            order = start + i
            key = (float(losses[i]), -order)
            if len(self._heap) >= self.max_examples and key <= self._heap[0][:2]:
                continue
            item = key + (
                order,
                None if images is None else np.array(images[i]),
                int(labels[i]),
                probabilities[i].copy(),
                None if paths is None else str(paths[i]),
            )
            if len(self._heap) < self.max_examples:
                heapq.heappush(self._heap, item)
            else:
                heapq.heapreplace(self._heap, item)

    def result(self):
        """The metrics of every example seen so far.

        Returns:
            The dict of `classification_metrics`, with `loss` added: the
            mean cross-entropy (`None` without examples).
        """
        metrics = classification_metrics(self._matrix, self.class_names)
        metrics["loss"] = (
            self._loss_sum / self._count if self._count else None
        )
        return metrics

    def worst(self):
        """The worst-classified examples kept, highest loss first.

        Returns:
            A `TopLosses` of `(images, labels, probabilities, losses,
            indices, paths)`: NumPy arrays (`images` is `None` when no
            batch gave images), `indices` each example's position in the
            data, `paths` a list of files (`None` when no batch gave
            paths). `None` when nothing was seen or `max_examples` is `0`.
        """
        if not self._heap:
            return None
        items = sorted(self._heap, key=lambda item: (-item[0], item[2]))
        losses, _, indices, images, labels, probabilities, paths = zip(
            *items, strict=True
        )
        return TopLosses(
            None if any(image is None for image in images)
            else np.stack(images),
            np.array(labels),
            np.stack(probabilities),
            np.array(losses),
            np.array(indices),
            None if any(path is None for path in paths) else list(paths),
        )
