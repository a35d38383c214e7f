"""One evaluation report per run: PNGs, metrics and a self-contained page.

`write_run_report` adds to `transfer.write_report` (per-class metrics,
confusion matrix, training curves) a grid of the worst-classified examples
and `report.html`, one page with every image inlined as base64, so it can be
mailed or opened anywhere without the run directory.
"""

import base64
import html
import os

from transfer.reporting import plots
from transfer.reporting.report import top_losses
from transfer.reporting.report import write_report
from transfer.training import resume


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


def _worst_texts_table(worst, class_names):
    texts, labels, probabilities, losses = worst
    rows = "".join(
        f"<tr><td>{html.escape(str(text))[:300]}</td>"
        f"<td>{html.escape(class_names[int(label)])}</td>"
        f"<td>{html.escape(class_names[int(p.argmax())])}</td>"
        f"<td>{loss:.3f}</td></tr>"
        for text, label, p, loss in zip(texts, labels, probabilities, losses,
                                        strict=True)
    )
    return (
        "<table><tr><th>text</th><th>true</th><th>predicted</th>"
        f"<th>loss</th></tr>{rows}</table>"
    )


def write_run_report(run_dir, model, data=None, *, class_names=None,
                     split="validation", output_dir=None, max_examples=8):
    """Writes the full report of a trained run into `output_dir`.

    Files: `metrics.json` (per-class precision, recall, F1, confusion
    matrix), `confusion_matrix.png`, `training_curves.png` (from the run's
    stage histories), `worst_examples.png` (images) and `report.html`, a
    single page that inlines them all.

    Args:
        run_dir: the run directory (for the training curves).
        model: the trained classifier.
        data: labelled `(x, y)` evaluation arrays, or `None` for curves
            only. Defaults to `None`.
        class_names: class names. Defaults to `None` (`"0"`, `"1"`, ...).
        split: what `data` is, shown in the report.
            Defaults to `"validation"`.
        output_dir: where to write. Defaults to `None`: `run_dir/report`.
        max_examples: how many worst-classified examples to show.
            Defaults to `8`.

    Returns:
        The metrics dict, with `files` (the paths written) added.

    Example:

    >>> model, config = transfer.workflow.load_run("runs/a")
    >>> x, y = transfer.workflow.load_labelled_data("test/", model)
    >>> transfer.run_report.write_run_report("runs/a", model, (x, y))["accuracy"]
    0.93
    """
    output_dir = output_dir or os.path.join(run_dir, "report")
    histories, stage_names = resume.stage_histories(run_dir)
    metrics = write_report(
        output_dir, histories or None, stage_names=stage_names or None,
        model=model, data=data, class_names=class_names, split=split,
    )
    class_names = metrics.get("class_names") or class_names
    sections = [f"<h1>Report: {html.escape(os.path.abspath(run_dir))}</h1>"]
    if metrics.get("split"):
        sections.append(
            f"<p>{html.escape(split)} data: {metrics['num_examples']} "
            f"examples, accuracy {metrics['accuracy']:.4f}</p>"
        )
        sections.append("<h2>Per-class metrics</h2>" + _metrics_table(metrics))
    names = ["training_curves.png", "confusion_matrix.png"]
    worst = None
    if data is not None and max_examples:
        worst = top_losses(model, data, max_examples)
    texts = worst is not None and worst[0].dtype.kind in "OUS"
    if worst is not None and not texts:
        figure = plots.top_losses_figure(*worst, class_names)
        figure.savefig(os.path.join(output_dir, "worst_examples.png"))
        names.append("worst_examples.png")
    titles = {
        "training_curves.png": "Training curves",
        "confusion_matrix.png": "Confusion matrix",
        "worst_examples.png": "Worst-classified examples (true / predicted)",
    }
    files = []
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            files.append(path)
            sections.append(f"<h2>{titles[name]}</h2>{_inline_png(path)}")
    if texts:
        sections.append(
            "<h2>Worst-classified examples</h2>"
            + _worst_texts_table(worst, class_names)
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>transfer report</title><style>body{font-family:sans-serif;"
        "margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
        "#ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
        "</style></head><body>" + "".join(sections) + "</body></html>"
    )
    html_path = os.path.join(output_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)
    files += [html_path, os.path.join(output_dir, "metrics.json")]
    metrics["files"] = files
    return metrics
