"""A report for people who don't open TensorBoard, and the images it shares.

`write_report` writes `training_curves.png`, `confusion_matrix.png` and
`metrics.json` (per-class precision, recall and F1). The figures are drawn
with matplotlib's object-oriented API (no `pyplot` global state) and are
reused by the TensorBoard image callbacks in `transfer.callbacks`.
"""

import logging
import math
import os

import numpy as np

from transfer.export import write_json

logger = logging.getLogger(__name__)

# Tiles smaller than this are enlarged (nearest neighbour) to stay visible.
_MIN_TILE = 64


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "transfer's report and TensorBoard image callbacks draw with "
            "matplotlib. Install it with `pip install matplotlib`."
        ) from e
    return Figure, FigureCanvasAgg


def require_matplotlib():
    """Raises a clear `ImportError` now if matplotlib is missing."""
    _matplotlib()


def _figure(width, height):
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=(width, height), dpi=100)
    canvas_class(figure)
    return figure


def figure_to_array(figure):
    """Renders a matplotlib `Figure` to a `uint8` RGB array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def display_images(images):
    """`uint8` images from model inputs in `[0, 255]` (or `[0, 1]`)."""
    images = np.asarray(images, dtype="float32")
    if images.ndim == 3:
        images = images[..., None]
    if images.size and images.max() <= 1.0 and images.min() >= 0.0:
        images = images * 255.0
    return np.clip(np.round(images), 0, 255).astype("uint8")


def image_grid(images, columns=None, padding=2):
    """Tiles images `(n, h, w, c)` into one `uint8` image, row by row.

    Tiles under 64 pixels are enlarged by an integer factor. The grid has
    `columns` columns (default: a square layout) and white `padding`.

    Args:
        images: images with values in `[0, 255]` (or `[0, 1]`).
        columns: number of columns. Defaults to `ceil(sqrt(n))`.
        padding: pixels between and around tiles. Defaults to `2`.

    Returns:
        A `uint8` array `(height, width, channels)`.
    """
    images = display_images(images)
    n, h, w, c = images.shape
    factor = max(1, math.ceil(_MIN_TILE / max(h, w)))
    if factor > 1:
        images = images.repeat(factor, axis=1).repeat(factor, axis=2)
        h, w = h * factor, w * factor
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full(
        (rows * (h + padding) + padding, columns * (w + padding) + padding, c),
        255,
        dtype="uint8",
    )
    for i, image in enumerate(images):
        top = padding + (i // columns) * (h + padding)
        left = padding + (i % columns) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def confusion_matrix_figure(matrix, class_names, title="Confusion matrix"):
    """A labelled confusion matrix (rows: true class, columns: predicted).

    Cells show counts; colours show each row's share, so that rare classes
    stay readable. The figure is square, `max(4, min(12, 2 + 0.6 n))`
    inches at 100 dpi for `n` classes.
    """
    matrix = np.asarray(matrix)
    n = len(class_names)
    size = max(4.0, min(12.0, 2.0 + 0.6 * n))
    figure = _figure(size, size)
    axes = figure.add_subplot()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(n)
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                axes.text(
                    j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black",
                    fontsize=8,
                )
    figure.tight_layout()
    return figure


def top_losses_figure(images, labels, predictions, losses, class_names):
    """A grid of examples titled `true / predicted`, loss and probability.

    Args:
        images: the examples, `(k, h, w, c)`, values in `[0, 255]`.
        labels: true class indices, `(k,)`.
        predictions: class probabilities, `(k, num_classes)`.
        losses: per-example cross-entropy, `(k,)`.
        class_names: the class names.

    Returns:
        A matplotlib `Figure`, 2.2 x 2.5 inches per tile, 4 tiles a row.
    """
    images = display_images(images)
    k = len(images)
    columns = min(4, max(k, 1))
    rows = max(1, math.ceil(k / columns))
    figure = _figure(2.2 * columns, 2.5 * rows)
    for i in range(k):
        axes = figure.add_subplot(rows, columns, i + 1)
        image = images[i]
        axes.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                    cmap="gray", vmin=0, vmax=255)
        predicted = int(np.argmax(predictions[i]))
        axes.set_title(
            f"{class_names[int(labels[i])]} / {class_names[predicted]}\n"
            f"loss {losses[i]:.2f}, p {predictions[i][predicted]:.2f}",
            fontsize=8,
        )
        axes.axis("off")
    figure.suptitle("Top losses: true / predicted", fontsize=10)
    figure.tight_layout()
    return figure


def _metric_names(histories):
    names = []
    for history in histories:
        for key in history.history:
            base = key[4:] if key.startswith("val_") else key
            if base not in names and base != "learning_rate":
                names.append(base)
    return names


def training_curves_figure(histories, stage_names=None):
    """Loss and metric curves over all stages, one panel per metric.

    Epochs continue across stages (as `fit_recipe` numbers them); a dashed
    line marks where each stage starts.
    """
    names = _metric_names(histories) or ["loss"]
    figure = _figure(5.0 * len(names), 3.6)
    stage_names = stage_names or [f"stage {i + 1}" for i in range(len(histories))]
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        for prefix, label in (("", "train"), ("val_", "validation")):
            epochs, values = [], []
            for history in histories:
                series = history.history.get(prefix + name) or []
                epochs.extend(history.epoch[: len(series)])
                values.extend(series)
            if values:
                axes.plot(epochs, values, marker="o", label=label)
        for history, stage in zip(histories, stage_names, strict=False):
            if history.epoch:
                axes.axvline(history.epoch[0] - 0.5, color="gray", ls="--")
                axes.annotate(
                    stage, (history.epoch[0] - 0.5, 1.0),
                    xycoords=("data", "axes fraction"), fontsize=8,
                    ha="left", va="top", rotation=90, color="gray",
                )
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def iterate_batches(data, batch_size=32):
    """Yields `(images, labels)` NumPy batches of an evaluation set.

    Args:
        data: an `(x, y)` tuple of arrays, a `keras.utils.PyDataset`, a
            finite `tf.data.Dataset` or any iterable of `(x, y)` batches.
        batch_size: batch size for array data. Defaults to `32`.

    Raises:
        ValueError: the data is infinite or has no labels.
    """
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        for start in range(0, len(x), batch_size):
            yield (
                np.asarray(x[start : start + batch_size]),
                np.asarray(y[start : start + batch_size]),
            )
        return
    cardinality = getattr(data, "cardinality", None)
    if cardinality is not None and int(cardinality()) == -1:
        raise ValueError(
            "Evaluation data must be finite, but this tf.data.Dataset repeats "
            "forever. Pass it without .repeat(), or .take(n) batches. "
            f"Received: {data!r}"
        )
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        batches = (data[i] for i in range(len(data)))
    else:
        batches = iter(data)
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "Evaluation data must yield (images, labels) batches. "
                f"Received: a batch of type {type(batch).__name__}"
            )
        yield np.asarray(batch[0]), np.asarray(batch[1])


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
    for images, labels in iterate_batches(data, batch_size):
        if labels.ndim == 2 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)
        outputs = model.predict_on_batch(images)
        yield images, labels.reshape(-1).astype("int64"), _as_probabilities(
            outputs
        )


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

    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> model = transfer.build_classifier("tiny_cnn", 2, weights=None)
    >>> metrics = transfer.write_report("report", model=model, data=(x, y))
    >>> sorted(metrics["per_class"])
    ['0', '1']
    """
    require_matplotlib()
    os.makedirs(report_dir, exist_ok=True)
    metrics = {"split": None}
    if histories:
        figure = training_curves_figure(histories, stage_names)
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
        figure = confusion_matrix_figure(
            np.asarray(evaluation["confusion_matrix"]),
            evaluation["class_names"],
            title=f"Confusion matrix ({split}, accuracy {accuracy:.3f})",
        )
        figure.savefig(os.path.join(report_dir, "confusion_matrix.png"))
    else:
        logger.info(
            "No evaluation data: %s has curves only, no per-class metrics.",
            report_dir,
        )
    write_json(os.path.join(report_dir, "metrics.json"), metrics)
    return metrics
