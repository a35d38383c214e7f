"""Figures for TensorBoard images and the report, drawn with matplotlib.

Confusion matrices, top-loss grids and training curves use matplotlib's
object-oriented API (`Figure` with an Agg canvas, no `pyplot` global
state), imported lazily; image grids of model inputs need only NumPy.
"""

import math
import re
import textwrap

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


# How each worst-examples tile is titled, for figures shown on their own.
TILE_LEGEND = (
    "true / predicted (p = the model's probability for the predicted class)"
)

# Worst-examples grid, in inches at 100 dpi: each tile is a band of text
# lines over its image, so that no title can run into another row.
_TILE_IMAGE = 2.0
_TILE_WIDTH = 2.5
_LINE_HEIGHT = 0.16  # 8 pt text with its leading
_CHAR_WIDTH = 0.068  # a wide average character of 8 pt DejaVu Sans
_MARGIN = 0.15


def _title_lines(text, width, max_lines=2):
    """`text` wrapped at spaces into at most `max_lines` lines."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return lines


def _class_lines(true, predicted, probability, width, max_lines=2):
    """`true / predicted (p = ...)` in at most `max_lines` lines.

    Long class names are shortened ("…"), each to its share of the
    lines, so that both names and the probability always show: cutting
    the text's end would drop the predicted class and `p`.
    """
    lines = _title_lines(f"{true} / {predicted} {probability}", width,
                         max_lines=max_lines + 1)
    if len(lines) <= max_lines:
        return lines
    # Room for both names: every line but the words around them; wrapping
    # at spaces wastes some, so shorten until the text fits.
    keep = max(4, (max_lines * width - len(probability) - 6) // 2)
    while True:
        short = [name if len(name) <= keep else name[: keep - 1] + "…"
                 for name in (true, predicted)]
        lines = textwrap.wrap(f"{short[0]} / {short[1]} {probability}", width)
        if len(lines) <= max_lines or keep <= 4:
            return _title_lines(" ".join(lines), width, max_lines=max_lines)
        keep -= 2


def _path_lines(path, width, max_lines=2):
    """`path` wrapped after its separators, keeping its end.

    A path that needs more than `max_lines` lines loses its beginning
    ("…"): the file name is what tells examples apart.
    """
    lines = [""]
    for token in re.findall(r"[^/\\]+[/\\]?|[/\\]", str(path)):
        while len(token) > width:
            if lines[-1]:
                lines.append("")
            lines[-1], token = token[:width], token[width:]
            lines.append("")
        if len(lines[-1]) + len(token) > width:
            lines.append("")
        lines[-1] += token
    lines = [line for line in lines if line] or [""]
    if len(lines) > max_lines:
        lines = lines[-max_lines:]
        lines[0] = "…" + lines[0][-(width - 1):]
    return lines


def top_losses_figure(images, labels, predictions, losses, class_names, *,
                      file_paths=None, title=f"Worst examples: {TILE_LEGEND}"):
    """A grid of examples, each titled `true / predicted (p = 0.87)`.

    Every tile has its own band of text above its image: `true / predicted
    (p = probability of the predicted class)`, the loss and, when known,
    the file. The figure's size follows the number of rows and of text
    lines, so titles never overlap images at any grid size. Wrong
    predictions are titled in red.

    Args:
        images: the examples, `(k, h, w, c)`, values in `[0, 255]`.
        labels: true class indices, `(k,)`.
        predictions: class probabilities, `(k, num_classes)`.
        losses: per-example cross-entropy, `(k,)`.
        class_names: the class names.
        file_paths: each example's file (relative to the data folder), or
            `None`. Defaults to `None`.
        title: the figure's title, wrapped to its width. Defaults to
            `"Worst examples: "` and `TILE_LEGEND`, which explains `p`.

    Returns:
        A matplotlib `Figure`, 2.5 inches wide per tile, 4 tiles a row.
    """
    images = display_images(images)
    k = len(images)
    columns = min(4, max(k, 1))
    rows = max(1, math.ceil(k / columns))
    width = int(_TILE_WIDTH / _CHAR_WIDTH)
    tiles = []
    for i in range(k):
        predicted = int(np.argmax(predictions[i]))
        # No-break spaces keep "(p = 0.87)" on one line.
        probability = f"(p = {predictions[i][predicted]:.2f})".replace(
            " ", "\u00a0"
        )
        lines = _class_lines(
            class_names[int(labels[i])], class_names[predicted],
            probability, width,
        )
        lines.append(f"loss {losses[i]:.2f}")
        if file_paths is not None:
            lines += _path_lines(file_paths[i], width)
        tiles.append((lines, predicted != int(labels[i])))
    band = _LINE_HEIGHT * max((len(t[0]) for t in tiles), default=1) + 0.1
    fig_width = columns * _TILE_WIDTH + 2 * _MARGIN
    header_lines = _title_lines(
        title, int(fig_width / (_CHAR_WIDTH * 9 / 8)), max_lines=4
    )
    header = _LINE_HEIGHT * 9 / 8 * len(header_lines) + 0.25
    tile_height = band + _TILE_IMAGE + 0.15
    fig_height = header + rows * tile_height + _MARGIN
    figure = new_figure(fig_width, fig_height)
    figure.text(
        0.5, 1 - 0.12 / fig_height, "\n".join(header_lines),
        ha="center", va="top", fontsize=9,
    )
    for i, (lines, wrong) in enumerate(tiles):
        row, column = divmod(i, columns)
        left = _MARGIN + column * _TILE_WIDTH
        image_top = fig_height - header - row * tile_height - band
        # Text sits on its image: its band is as tall as the longest one.
        figure.text(
            (left + _TILE_WIDTH / 2) / fig_width,
            (image_top + 0.05) / fig_height,
            "\n".join(lines), ha="center", va="bottom", fontsize=8,
            linespacing=1.25, color="firebrick" if wrong else "black",
        )
        axes = figure.add_axes((
            (left + (_TILE_WIDTH - _TILE_IMAGE) / 2) / fig_width,
            (image_top - _TILE_IMAGE) / fig_height,
            _TILE_IMAGE / fig_width,
            _TILE_IMAGE / fig_height,
        ))
        image = images[i]
        axes.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                    cmap="gray", vmin=0, vmax=255)
        axes.axis("off")
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

    Epochs are numbered from 1, as Keras's progress bar counts them, and
    continue across stages (as `fit_recipe` runs them). Each stage is a
    shaded band named above the panel, so that its name stays readable
    however few epochs it has.
    """
    names = _metric_names(histories) or ["loss"]
    panel_width = 5.0
    figure = new_figure(panel_width * len(names), 3.9)
    stage_names = stage_names or [f"stage {i + 1}" for i in range(len(histories))]
    spans = [
        (history.epoch[0] + 1, history.epoch[-1] + 1, stage)
        for history, stage in zip(histories, stage_names, strict=False)
        if history.epoch
    ]
    first = min((s[0] for s in spans), default=1)
    last = max((s[1] for s in spans), default=1)
    for index, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), index + 1)
        for prefix, label in (("", "train"), ("val_", "validation")):
            epochs, values = [], []
            for history in histories:
                series = history.history.get(prefix + name) or []
                epochs.extend(e + 1 for e in history.epoch[: len(series)])
                values.extend(series)
            if values:
                axes.plot(epochs, values, marker="o", label=label)
        above = axes.get_xaxis_transform()  # x in epochs, y in the panel
        for number, (start, end, stage) in enumerate(spans):
            axes.axvspan(start - 0.5, end + 0.5, zorder=0,
                         color="0.92" if number % 2 == 0 else "0.97")
            if number:
                axes.axvline(start - 0.5, color="gray", ls="--", lw=0.8)
            # Characters that fit over the band (the panel's axes take
            # about 80 % of its width).
            fits = (end - start + 1) / (last - first + 1) * panel_width * 0.8
            axes.text(
                (start + end) / 2, 1.02, _shortened(str(stage), fits / 0.07),
                transform=above, ha="center", va="bottom", fontsize=9,
                color="0.3", clip_on=False,
            )
        axes.set_xlim(first - 0.5, last + 0.5)
        axes.set_title(name, pad=16)
        axes.set_xlabel("epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _shortened(text, characters):
    characters = max(int(characters), 2)
    return text if len(text) <= characters else text[: characters - 1] + "…"


def reliability_diagram_figure(curves, labels):
    """A reliability diagram: accuracy against confidence, per bin.

    Each curve is `(confidence, accuracy, count)` per equal-width bin of
    the top probability (`transfer.calibration.reliability_bins`); empty
    bins are left out. A calibrated model lies on the diagonal; below it,
    the model is over-confident. The bins' counts are drawn under it.

    Args:
        curves: one `(confidence, accuracy, count)` per curve.
        labels: one legend label per curve.
    """
    figure = new_figure(5.0, 6.0)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1,
             label="calibrated")
    bins = len(curves[0][2]) if curves else 1
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins / max(1, len(curves))
    for i, ((confidence, accuracy, count), label) in enumerate(
        zip(curves, labels, strict=True)
    ):
        used = np.asarray(count) > 0
        top.plot(np.asarray(confidence)[used], np.asarray(accuracy)[used],
                 marker="o", label=label)
        bottom.bar(edges[:-1] + i * width, count, width=width, align="edge",
                   label=label)
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram ({bins} equal-width bins)")
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("examples")
    figure.tight_layout()
    return figure
