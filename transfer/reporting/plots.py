"""Figures for TensorBoard images and the report, drawn with matplotlib.

Confusion matrices, top-loss grids and training curves use matplotlib's
object-oriented API (`Figure` with an Agg canvas, no `pyplot` global
state), imported lazily; image grids of model inputs need only NumPy.
"""

import math

import numpy as np

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


def new_figure(width, height):
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
    figure = new_figure(size, size)
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
    figure = new_figure(2.2 * columns, 2.5 * rows)
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
    figure = new_figure(5.0 * len(names), 3.6)
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
