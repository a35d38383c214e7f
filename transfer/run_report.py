"""One evaluation report per run: PNGs, metrics and a self-contained page.

`write_run_report` adds to `transfer.write_report` (per-class metrics,
confusion matrix, training curves) a grid of the worst-classified examples
and `report.html`, one page with every image inlined as base64, so it can be
mailed or opened anywhere without the run directory.
"""

import base64
import datetime
import html
import os

import keras

from transfer import _model_info
from transfer._version import __version__
from transfer.reporting import plots
from transfer.reporting.report import evaluate_data
from transfer.reporting.report import write_report
from transfer.training import resume

_P_EXPLAINED = (
    "<p>Each example is titled <em>true class / predicted class (p = "
    "probability)</em>: <strong>p</strong> is the probability the model "
    "gives its predicted class, and <strong>loss</strong> the example's "
    "cross-entropy, highest first.{files}</p>"
)


def _inline_png(path):
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _metrics_table(metrics):
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.3f}</td>"
        f"<td>{m['recall']:.3f}</td><td>{m['f1']:.3f}</td>"
        f"<td>{m['support']}</td></tr>"
        for name, m in metrics.get("per_class", {}).items()
    )
    for average in ("macro_avg", "weighted_avg"):
        if average in metrics:
            m = metrics[average]
            rows += (
                f"<tr><th>{average.replace('_', ' ')}</th>"
                f"<td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
                f"<td>{m['f1']:.3f}</td><td></td></tr>"
            )
    return (
        "<table><tr><th>class</th><th>precision</th><th>recall</th>"
        f"<th>F1</th><th>support</th></tr>{rows}</table>"
    )


def _header(run_dir, model, data, split, metrics):
    """The report's first table: what run, data, model and version."""
    metadata = _model_info.metadata(model)
    weights = metadata.get("weights") or {}
    directory = getattr(data, "directory", None)
    if data is None:
        data_text = "none (training curves only)"
    elif directory is not None:
        data_text = os.path.abspath(directory)
    else:
        data_text = f"{type(data).__name__} given to write_run_report"
    split_text = split
    if metrics.get("split"):
        split_text += f" ({metrics['num_examples']} examples)"
    backbone = metadata.get("backbone") or "unknown"
    if metadata.get("backbone_source"):
        backbone += f" ({metadata['backbone_source']})"
    weights_text = str(weights.get("weights") or "none")
    details = []
    if weights.get("source") and weights["source"] != weights_text:
        details.append(f"from {weights['source']}")
    if weights.get("path"):
        details.append(str(weights["path"]))
    if weights.get("sha256"):
        details.append(f"sha256 {weights['sha256'][:12]}")
    if details:
        weights_text += f" ({', '.join(details)})"
    rows = [
        ("run", os.path.abspath(run_dir)),
        ("data", data_text),
        ("split", split_text if data is not None else "none"),
        ("backbone", backbone),
        ("weights", weights_text),
        ("transfer", f"{__version__} (Keras {keras.__version__}, "
                     f"{keras.config.backend()} backend)"),
        ("date", datetime.datetime.now().astimezone().isoformat(
            timespec="seconds")),
    ]
    cells = "".join(
        f"<tr><th>{name}</th><td class='text'>{html.escape(str(value))}</td>"
        "</tr>"
        for name, value in rows
    )
    return f"<table class='header'>{cells}</table>"


def _worst_table(worst, class_names):
    """One row per worst example: its file (or text), classes, p, loss."""
    if worst.paths is not None:
        first = ("file", list(worst.paths))
    elif worst.images.dtype.kind in "OUS":
        first = ("text", [str(text)[:300] for text in worst.images])
    else:
        first = ("position in the data", [int(i) for i in worst.indices])
    rows = "".join(
        f"<tr><td>{rank}</td><td class='text'>{html.escape(str(item))}</td>"
        f"<td class='text'>{html.escape(class_names[int(label)])}</td>"
        f"<td class='text'>{html.escape(class_names[int(p.argmax())])}</td>"
        f"<td>{p.max():.3f}</td><td>{loss:.3f}</td></tr>"
        for rank, (item, label, p, loss) in enumerate(zip(
            first[1], worst.labels, worst.probabilities, worst.losses,
            strict=True,
        ), start=1)
    )
    return (
        f"<table><tr><th>#</th><th class='text'>{first[0]}</th>"
        "<th class='text'>true</th><th class='text'>predicted</th>"
        f"<th>p</th><th>loss</th></tr>{rows}</table>"
    )


def write_run_report(run_dir, model, data=None, *, class_names=None,
                     split="validation", output_dir=None, max_examples=8):
    """Writes the full report of a trained run into `output_dir`.

    Files: `metrics.json` (per-class precision, recall, F1, confusion
    matrix), `confusion_matrix.png`, `training_curves.png` (from the run's
    stage histories), `worst_examples.png` (images) and `report.html`, a
    single page that inlines them all. The page opens with what it covers:
    run, data folder, split, backbone, weights, `transfer` version and
    date; its worst examples are listed with their files when `data` knows
    them (as `transfer.evaluation_data.labelled_dataset` returns it).

    The data is read once, batch by batch: metrics, loss and the worst
    examples are accumulated together (`transfer.reporting.streaming.
    StreamingEvaluation`), so a streamed folder of any size fits in the
    memory of a few batches.

    Args:
        run_dir: the run directory (for the training curves).
        model: the trained classifier.
        data: labelled evaluation data (`(x, y)` arrays, a finite
            `tf.data.Dataset` or any iterable of `(x, y)` batches), or
            `None` for curves only; with `directory` and `file_paths`
            attributes (a `transfer.evaluation_data.LabelledDataset` or
            `LabelledData`), the page names the data folder and each worst
            example's file. Defaults to `None`.
        class_names: class names. Defaults to `None` (`"0"`, `"1"`, ...).
        split: what `data` is, shown in the report.
            Defaults to `"validation"`.
        output_dir: where to write. Defaults to `None`: `run_dir/report`.
        max_examples: how many worst-classified examples to show.
            Defaults to `8`.

    Returns:
        The metrics dict, with `files` (the paths written) added.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, y = transfer.synthetic_images(8, 32, 2)
    >>> metrics = transfer.run_report.write_run_report(
    ...     "runs/a", model, (x, y), class_names=["cat", "dog"],
    ...     split="test", max_examples=4)
    >>> metrics["num_examples"], 0.0 <= metrics["accuracy"] <= 1.0
    (8, True)
    >>> [os.path.basename(path) for path in metrics["files"]]
    ['confusion_matrix.png', 'worst_examples.png', 'report.html',
     'metrics.json']
    """
    output_dir = output_dir or os.path.join(run_dir, "report")
    histories, stage_names = resume.stage_histories(run_dir)
    # One pass over the data: metrics and worst examples together.
    evaluation = None
    if data is not None:
        evaluation = evaluate_data(model, data, class_names,
                                   max_examples=max_examples)
    metrics = write_report(
        output_dir, histories or None, stage_names=stage_names or None,
        model=model, data=data, class_names=class_names, split=split,
        evaluation=evaluation,
    )
    class_names = metrics.get("class_names") or class_names
    sections = [
        f"<h1>Report: {html.escape(os.path.basename(os.path.abspath(run_dir)))}"
        "</h1>",
        _header(run_dir, model, data, split, metrics),
    ]
    if metrics.get("split"):
        sections.append(
            f"<p>{html.escape(split)} data: {metrics['num_examples']} "
            f"examples, accuracy {metrics['accuracy']:.4f}</p>"
        )
        sections.append("<h2>Per-class metrics</h2>" + _metrics_table(metrics))
    worst = evaluation.worst() if evaluation is not None else None
    texts = worst is not None and worst.images.dtype.kind in "OUS"
    if worst is not None and not texts:
        figure = plots.top_losses_figure(
            worst.images, worst.labels, worst.probabilities, worst.losses,
            class_names, file_paths=worst.paths,
            # `p` is explained once, on the page.
            title=f"Worst examples ({split}), highest loss first",
        )
        figure.savefig(os.path.join(output_dir, "worst_examples.png"))
    files = []
    titles = (
        ("training_curves.png", "Training curves"),
        ("confusion_matrix.png", "Confusion matrix"),
        # Written by `fit_recipe` into run_dir/report (transfer.calibration).
        ("reliability_diagram.png", "Calibration: reliability diagram"),
    )
    for name, title in titles:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            files.append(path)
            sections.append(f"<h2>{title}</h2>{_inline_png(path)}")
    if worst is not None:
        sections.append("<h2>Worst-classified examples</h2>")
        sections.append(_P_EXPLAINED.format(
            files=" Files are relative to the data folder."
            if worst.paths is not None else ""
        ))
        if not texts:
            path = os.path.join(output_dir, "worst_examples.png")
            files.append(path)
            sections.append(_inline_png(path))
        sections.append(_worst_table(worst, class_names))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>transfer report</title><style>body{font-family:sans-serif;"
        "margin:2em}table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td.text,th.text,table.header th{text-align:left}"
        "img{max-width:100%}</style></head><body>"
        + "".join(sections) + "</body></html>"
    )
    html_path = os.path.join(output_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    files += [html_path, os.path.join(output_dir, "metrics.json")]
    metrics["files"] = files
    return metrics
