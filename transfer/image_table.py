"""Images with several targets in a CSV: multi-label or regression data.

A `file` column names each image relative to a data root, as for
`load_image_csv`; the target columns hold 0/1 per label (multi-label) or
numbers (regression). Rows are checked before any image is decoded, with row
numbers in every error (row 1 is the header), and the images then go through
the same preflight as `load_image_folder`.
"""

import csv
import os

import numpy as np

from transfer import preflight
from transfer.image_csv import FILE_COLUMN
from transfer.image_csv import _dataset
from transfer.image_csv import _outside
from transfer.image_csv import _raise

TABLE_TASKS = ("multilabel", "regression")


def _value(text, task):
    value = float(text)
    if not np.isfinite(value) or (task == "multilabel" and value not in (0, 1)):
        raise ValueError
    return value


def read_image_table(path, target_columns, *, task="multilabel",
                     data_root=None):
    """Reads and checks a CSV of images and target columns; decodes nothing.

    Returns:
        `(files, targets, rows, root)`: file paths relative to `root`, a
        `float32` array `(n, len(target_columns))`, CSV row numbers.

    Raises:
        FileNotFoundError: no CSV file or data root.
        ValueError: missing columns, bad task, or bad rows (paths outside
            the data root, missing files, duplicates, non-numeric targets or
            multi-label values other than 0 and 1), listed by row.
    """
    if task not in TABLE_TASKS:
        raise ValueError(
            f"`task` must be one of {TABLE_TASKS}. Received: task={task!r}"
        )
    target_columns = list(target_columns)
    if not target_columns:
        raise ValueError("Give at least one target column. Received: []")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CSV file '{path}' does not exist. Received: path={path!r}"
        )
    root = os.path.realpath(data_root if data_root is not None
                            else os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Data root '{root}' does not exist. Received: data_root={root!r}"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in [FILE_COLUMN, *target_columns] if c not in fields]
        if missing:
            raise ValueError(
                f"'{path}' has no column(s) {missing}. Received: columns "
                f"{fields}"
            )
        records = [(reader.line_num, row) for row in reader]
    if not records:
        raise ValueError(f"'{path}' lists no images. Received: 0 rows")
    allowed = "0 or 1" if task == "multilabel" else "a finite number"
    problems = {"outside the data root": [], "missing file": [],
                "duplicate": [], f"target not {allowed}": []}
    seen, files, targets, rows = {}, [], [], []
    for row, record in records:
        name = (record[FILE_COLUMN] or "").strip()
        why = _outside(name, root) if name else "empty"
        if why:
            problems["outside the data root"].append((row, f"'{name}' is {why}"))
            continue
        normal = os.path.normpath(name)
        if normal in seen:
            problems["duplicate"].append((row, f"'{name}' is also in row "
                                          f"{seen[normal]}"))
            continue
        seen[normal] = row
        if not os.path.isfile(os.path.join(root, normal)):
            problems["missing file"].append((row, f"'{name}'"))
        values = []
        for column in target_columns:
            try:
                values.append(_value(record[column], task))
            except (TypeError, ValueError):
                problems[f"target not {allowed}"].append(
                    (row, f"{column}={record[column]!r}")
                )
        files.append(normal)
        targets.append(values)
        rows.append(row)
    _raise(path, problems)
    return files, np.asarray(targets, "float32"), rows, root


def load_image_table(
    path,
    target_columns,
    *,
    image_size,
    task="multilabel",
    data_root=None,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
):
    """Reads images and several targets from a CSV as `tf.data` datasets.

    For `transfer.build_multilabel_classifier` (`task="multilabel"`: each
    target column is a label holding 0 or 1) or `transfer.build_regressor`
    (`task="regression"`: numeric targets). Images are RGB `float32` in
    `[0, 255]`, resized to `image_size`, in a seeded split. The datasets
    carry `class_names` (the target columns) and `transfer_preflight`.

    Args:
        path: the CSV file, with a `file` column and the target columns.
        target_columns: names of the target columns, in output order.
        image_size: square size images are resized to.
        task: `"multilabel"` or `"regression"`. Defaults to `"multilabel"`.
        data_root: the folder `file` paths are relative to. Defaults to the
            CSV file's folder.
        batch_size: batch size. Defaults to `32`.
        validation_split: fraction held out for validation, or `0`.
            Defaults to `0.2`.
        seed: seed of the split and shuffling. Defaults to `1337`.

    Returns:
        `(train_ds, val_ds, target_columns)`; `val_ds` is `None` without a
        split.

    Example:

    >>> train, val, labels = transfer.load_image_table(
    ...     "data/tags.csv", ["cat", "dog", "outdoor"], image_size=224)
    """
    if not 0 <= validation_split < 1:
        raise ValueError(
            "`validation_split` must be in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    files, targets, rows, root = read_image_table(
        path, target_columns, task=task, data_root=data_root
    )
    report = preflight.check_images(root, files, verbose=1)
    row_of = dict(zip(files, rows, strict=True))
    report.raise_for_bad_files(lambda name: f"row {row_of[name]} '{name}'")
    order = np.random.default_rng(seed).permutation(len(files))
    paths = [report.path_for(files[i]) for i in order]
    targets = targets[order]
    split = int(round(len(order) * validation_split))
    train = _dataset(paths[split:], targets[split:], image_size, batch_size,
                     True, seed)
    val = (_dataset(paths[:split], targets[:split], image_size, batch_size,
                    False, seed) if split else None)
    names = [str(c) for c in target_columns]
    for dataset in (train, val):
        if dataset is not None:
            dataset.class_names = names
            dataset.transfer_preflight = report
    return train, val, names
