"""The doctor's files: `issues.csv` and the TensorBoard projector.

`issues.csv` has one row per file and issue (`ISSUE_COLUMNS`). The
projector folder holds the embeddings (raw float32, as the projector reads
`.bytes` files), `metadata.tsv` (file, label, issues) and a sprite of
32-pixel thumbnails, with `projector_config.pbtxt` naming them:
`tensorboard --logdir doctor/projector` shows them under Projector.
"""

import csv
import io
import math
import os

import numpy as np

from transfer._io import atomic_write
from transfer._io import write_text

ISSUE_COLUMNS = ("file", "issue", "score", "given_label", "suggested_label",
                 "part", "other_files", "detail")
ISSUES = ("unreadable", "exact_duplicate", "near_duplicate", "leakage",
          "label_error", "outlier", "class_imbalance")
PROJECTOR = "projector"
# The projector's sprite may be at most 8192 pixels a side.
_MAX_SPRITE = 8192


def write_issues_csv(path, rows):
    """Writes `rows` (dicts with `ISSUE_COLUMNS`) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ISSUE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in ISSUE_COLUMNS})
    return write_text(path, buffer.getvalue())


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _tsv(text):
    return " ".join(str(text).split())


def _sprite(thumbnails):
    """`(png bytes, tile size)`: thumbnails tiled row by row."""
    from PIL import Image  # Pillow: installed with the data loaders

    count = len(thumbnails)
    side = max(1, math.ceil(math.sqrt(count)))
    tile = min(thumbnails.shape[1], _MAX_SPRITE // side)
    sheet = np.zeros((side * tile, side * tile, 3), "uint8")
    for i, thumb in enumerate(thumbnails):
        if tile != thumb.shape[0]:
            thumb = np.asarray(Image.fromarray(thumb).resize((tile, tile)))
        row, column = divmod(i, side)
        sheet[row * tile:(row + 1) * tile,
              column * tile:(column + 1) * tile] = thumb
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue(), tile


def write_projector(directory, embeddings, thumbnails, metadata):
    """Writes the projector files into `directory`; returns its path.

    Args:
        directory: the projector folder (TensorBoard's log directory).
        embeddings: `(n, d)` float32.
        thumbnails: `(n, size, size, 3)` uint8.
        metadata: `{"file": [...], "label": [...], "issues": [...]}`.
    """
    os.makedirs(directory, exist_ok=True)
    vectors = np.ascontiguousarray(embeddings, dtype="<f4").tobytes()
    atomic_write(os.path.join(directory, "embeddings.bytes"),
                 lambda f: f.write(vectors), size=len(vectors))
    columns = list(metadata)
    lines = ["\t".join(columns)]
    for values in zip(*(metadata[c] for c in columns), strict=True):
        lines.append("\t".join(_tsv(v) or "-" for v in values))
    write_text(os.path.join(directory, "metadata.tsv"),
               "\n".join(lines) + "\n")
    sprite, tile = _sprite(thumbnails)
    atomic_write(os.path.join(directory, "sprite.png"),
                 lambda f: f.write(sprite), size=len(sprite))
    count, dimension = embeddings.shape
    config = (
        "embeddings {\n"
        '  tensor_name: "doctor_embeddings"\n'
        '  tensor_path: "embeddings.bytes"\n'
        f"  tensor_shape: {count}\n"
        f"  tensor_shape: {dimension}\n"
        '  metadata_path: "metadata.tsv"\n'
        "  sprite {\n"
        '    image_path: "sprite.png"\n'
        f"    single_image_dim: {tile}\n"
        f"    single_image_dim: {tile}\n"
        "  }\n"
        "}\n"
    )
    write_text(os.path.join(directory, "projector_config.pbtxt"), config)
    return directory
