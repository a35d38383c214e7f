"""`report.html`: the doctor's findings as image grids, one page.

Every image is inlined (a 96-pixel PNG, base64), so the page opens
anywhere without the data folder; each tile names the file, its given
label and, for label errors, the suggested one, with the score. A section
shows at most `MAX_SHOWN` findings, worst first; `issues.csv` has them all.
"""

import base64
import datetime
import html
import io

import numpy as np

from transfer._io import write_text
from transfer._version import __version__
from transfer.data import image_files

MAX_SHOWN = 60
_TILE = 96
_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
    ".grid{display:flex;flex-wrap:wrap;gap:10px}"
    ".tile{width:210px;font-size:11px;border:1px solid #ccc;padding:4px}"
    ".tile img{width:96px;height:96px;image-rendering:pixelated;"
    "margin-right:2px}"
    ".path{word-break:break-all;color:#444}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:left}"
)
_EXPLAINED = {
    "unreadable": "Files that could not be decoded: left out of everything "
                  "else.",
    "exact_duplicate": "Files with the same bytes as another file (sha256).",
    "near_duplicate": "Pairs whose embeddings have a cosine similarity at "
                      "or above the threshold: resized, re-encoded or "
                      "cropped copies.",
    "leakage": "Duplicates (exact or near) in two different parts: a "
               "validation or test image with a copy in training.",
    "label_error": "Files whose given label the cross-validated classifier "
                   "finds unlikely (cleanlab, confident learning); score = "
                   "label quality, lower is worse.",
    "outlier": "Unusual images (cleanlab out-of-distribution score below "
               "Tukey's lower fence); lower is more unusual.",
    "class_imbalance": "Classes with fewer than half the median class's "
                       "images.",
}


def _image_tag(path):
    from PIL import Image  # Pillow: installed with the data loaders

    try:
        pixels = image_files.read_image(path)
    except ValueError:
        return "<em>unreadable</em>"
    image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))
    image.thumbnail((_TILE, _TILE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _tile(row, paths):
    names = [row["file"]] + [n for n in (row.get("other_files") or "")
                             .split(" | ") if n][:1]
    images = "".join(_image_tag(paths[n]) for n in names if n in paths)
    lines = [f"<div class='path'>{html.escape(row['file'])}</div>"]
    if row.get("other_files"):
        lines.append("<div class='path'>with "
                     f"{html.escape(row['other_files'])}</div>")
    label = row.get("given_label")
    if label:
        lines.append(f"given: <b>{html.escape(label)}</b>")
    if row.get("suggested_label"):
        lines.append(f" suggested: <b>{html.escape(row['suggested_label'])}"
                     "</b>")
    if row.get("score") is not None:
        lines.append(f"<div>score {row['score']:.3f}</div>")
    if row.get("detail"):
        lines.append(f"<div>{html.escape(str(row['detail']))}</div>")
    return f"<div class='tile'>{images}<br>{''.join(lines)}</div>"


def write_report_page(path, summary, rows, paths):
    """Writes `report.html`.

    Args:
        path: the page's path.
        summary: the doctor's JSON summary (counts, settings).
        rows: the issue rows (`transfer.doctor.outputs.ISSUE_COLUMNS`), in
            each issue's order, worst first.
        paths: `{file name: path on disk}` of the files to show.
    """
    sections = []
    counts = "".join(
        f"<tr><td>{html.escape(issue)}</td><td>{count}</td></tr>"
        for issue, count in summary["issues"].items()
    )
    for issue, explained in _EXPLAINED.items():
        found = [row for row in rows if row["issue"] == issue]
        if not found:
            continue
        if issue == "class_imbalance":
            tiles = "".join(
                f"<tr><td>{html.escape(row['file'])}</td>"
                f"<td>{row['detail']}</td></tr>" for row in found)
            sections.append(f"<h2>{issue}</h2><p>{explained}</p>"
                            f"<table>{tiles}</table>")
            continue
        shown = found[:MAX_SHOWN]
        more = (f"<p>{len(found) - len(shown)} more in issues.csv.</p>"
                if len(found) > len(shown) else "")
        tiles = "".join(_tile(row, paths) for row in shown)
        sections.append(
            f"<h2>{issue} ({len(found)})</h2><p>{explained}</p>"
            f"<div class='grid'>{tiles}</div>{more}")
    settings = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td>"
        "</tr>" for key, value in summary["settings"].items())
    created = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>transfer doctor: {html.escape(summary['data'])}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>transfer doctor: {html.escape(summary['data'])}</h1>"
        f"<p>{summary['files']} files, {len(summary['class_counts'])} "
        f"classes; transfer {__version__}, {created}.</p>"
        f"<table>{settings}</table><h2>Issues</h2>"
        f"<table><tr><th>issue</th><th>files</th></tr>{counts}</table>"
        + "".join(sections) + "</body></html>\n"
    )
    write_text(path, page)
    return path
