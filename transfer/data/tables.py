"""Images listed in CSV files: one class per row, or several targets.

`load_image_csv` reads a CSV whose `file` column names images relative to a
data root, and whose `label` column names their classes. `load_image_table`
reads the same `file` column with several target columns: 0/1 per label
(multi-label) or numbers (regression). Every row is checked before any
image is decoded, and every error gives row numbers (row 1 is the header):
a path outside the data root (`..`, an absolute path, or a symlink that
resolves outside it) is refused, as are unknown classes, bad targets,
missing files and duplicate rows. Then the images go through the same
preflight as `load_image_folder` (`transfer.data.images.preflight`).
"""

import csv
import logging
import os
import re

import numpy as np

from transfer.backbones.spec import check_interpolation
from transfer.data import fingerprint
from transfer.data import preflight

logger = logging.getLogger(__name__)

FILE_COLUMN = "file"
LABEL_COLUMN = "label"
_MAX_LISTED = 10


def _raise(path, problems):
    lines = []
    for what, items in problems.items():
        if items:
            listed = "; ".join(
                f"row {row}: {text}" for row, text in items[:_MAX_LISTED]
            )
            more = len(items) - _MAX_LISTED
            lines.append(
                f"{what} ({len(items)}): {listed}"
                + (f"; and {more} more" if more > 0 else "")
            )
    if lines:
        count = sum(len(items) for items in problems.values())
        raise ValueError(
            f"'{path}' has {count} bad row(s) (row 1 is the header):\n  "
            + "\n  ".join(lines)
            + f"\nFix or remove those rows. Received: {count} bad row(s)"
        )


def _outside(name, root):
    """Why `name` points outside `root`, or `None`."""
    parts = re.split(r"[\\/]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(
        r"^[A-Za-z]:", name
    ):
        return "an absolute path"
    if ".." in parts:
        return "a '..' path"
    real = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([real, root]) != root:
        return f"a link that resolves outside the data root (to '{real}')"
    return None


def read_image_csv(path, *, data_root=None, class_names=None):
    """Reads and checks an image list; decodes nothing.

    Args:
        path: the CSV file, with columns `file` and `label`.
        data_root: the folder `file` paths are relative to. Defaults to the
            CSV file's folder.
        class_names: the classes, in label order; a label outside them is an
            error. Defaults to `None`: the sorted distinct labels.

    Returns:
        `(files, labels, class_names, rows, root)`: file paths relative to
        `root` (the resolved data root), integer labels, the class names,
        and each file's CSV row number.

    Raises:
        FileNotFoundError: no CSV file or data root.
        ValueError: missing columns, or rows naming paths outside the data
            root, unknown classes, missing files or duplicates; fewer than
            two classes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CSV file '{path}' does not exist. Received: path={path!r}"
        )
    root = data_root if data_root is not None else os.path.dirname(
        os.path.abspath(path)
    )
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Data root '{root}' does not exist. Received: data_root={root!r}"
        )
    root = os.path.realpath(root)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in (FILE_COLUMN, LABEL_COLUMN) if c not in fields]
        if missing:
            raise ValueError(
                f"'{path}' has no column(s) {missing}; image lists need the "
                f"columns '{FILE_COLUMN}' and '{LABEL_COLUMN}'. Received: "
                f"columns {fields}"
            )
        records = [
            (reader.line_num, (row[FILE_COLUMN] or "").strip(),
             (row[LABEL_COLUMN] or "").strip())
            for row in reader
        ]
    if not records:
        raise ValueError(f"'{path}' lists no images. Received: 0 rows")
    problems = {
        "empty file or label": [], "outside the data root": [],
        "missing file": [], "unknown class": [], "duplicate": [],
    }
    seen = {}
    known = None if class_names is None else [str(c) for c in class_names]
    for row, name, label in records:
        if not name or not label:
            problems["empty file or label"].append((row, repr(name or label)))
            continue
        why = _outside(name, root)
        if why:
            problems["outside the data root"].append((row, f"'{name}' is {why}"))
            continue
        normal = os.path.normpath(name)
        if normal in seen:
            problems["duplicate"].append(
                (row, f"'{name}' is also in row {seen[normal]}")
            )
            continue
        seen[normal] = row
        if not os.path.isfile(os.path.join(root, normal)):
            problems["missing file"].append((row, f"'{name}'"))
        if known is not None and label not in known:
            problems["unknown class"].append(
                (row, f"{label!r} is not in {list(class_names)}")
            )
    _raise(path, problems)
    if class_names is None:
        class_names = sorted({label for _, _, label in records})
    class_names = [str(c) for c in class_names]
    if len(class_names) < 2:
        raise ValueError(
            f"'{path}' has {len(class_names)} class(es) {class_names}; "
            "classification needs at least two. Received: "
            f"class_names={class_names}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    files = [os.path.normpath(name) for _, name, _ in records]
    labels = np.asarray([index[label] for _, _, label in records], "int32")
    rows = [row for row, _, _ in records]
    return files, labels, class_names, rows, root


def _dataset(paths, labels, image_size, batch_size, shuffle, seed,
             interpolation):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path, label):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
        image = tf.image.resize(image, (image_size, image_size),
                                method=interpolation)
        return tf.cast(image, "float32"), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_image_csv(
    path,
    *,
    image_size,
    data_root=None,
    class_names=None,
    batch_size=32,
    validation_split=0.2,
    seed=1337,
    skip_bad_files=False,
    interpolation="bilinear",
):
    """Reads images listed in a CSV (`file`, `label`) as `tf.data` datasets.

    The rows are checked first (`read_image_csv`), then every image is
    decoded once (`transfer.data.preflight.check_images`, cached); errors name
    CSV rows. Images are RGB `float32` in `[0, 255]`, resized to
    `image_size`, in a seeded split. The datasets carry `class_names` and
    `transfer_preflight`.

    Args:
        path: the CSV file.
        image_size: square size images are resized to.
        data_root: the folder `file` paths are relative to. Defaults to the
            CSV file's folder.
        class_names: the classes in label order. Defaults to `None`: the
            sorted distinct labels.
        batch_size: batch size. Defaults to `32`.
        validation_split: fraction held out for validation, or `0` for none.
            Defaults to `0.2`.
        seed: seed of the split and shuffling. Defaults to `1337`.
        skip_bad_files: leave out empty, truncated and non-image files
            instead of raising. Defaults to `False`.
        interpolation: how images are resized, one of
            `transfer.backbones.spec.INTERPOLATIONS` (see
            `transfer.load_image_folder`). Defaults to `"bilinear"`.

    Returns:
        `(train_ds, val_ds, class_names)`; `val_ds` is `None` without split.

    Example:

    >>> import csv
    >>> import os
    >>> os.makedirs("data/images")
    >>> x, y = transfer.synthetic_images(6, 32, 2)
    >>> rows = [["file", "label"]]
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     keras.utils.save_img(f"data/images/{i}.png", image)
    ...     rows.append([f"images/{i}.png", ["cat", "dog"][label]])
    >>> with open("data/labels.csv", "w", newline="") as f:
    ...     csv.writer(f).writerows(rows)
    >>> train, val, names = transfer.load_image_csv(
    ...     "data/labels.csv", image_size=32, validation_split=0.5)
    >>> names
    ['cat', 'dog']
    >>> sum(int(labels.shape[0]) for _, labels in val)
    3
    """
    check_interpolation(interpolation)
    if not 0 <= validation_split < 1:
        raise ValueError(
            "`validation_split` must be in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )
    files, labels, class_names, rows, root = read_image_csv(
        path, data_root=data_root, class_names=class_names
    )
    report = preflight.check_images(
        root, files, skip_bad_files=skip_bad_files, verbose=1
    )
    row_of = dict(zip(files, rows, strict=True))
    report.raise_for_bad_files(lambda name: f"row {row_of[name]} '{name}'")
    good = set(report.good_files)
    keep = [i for i, name in enumerate(files) if name in good]
    present = set(labels[keep].tolist())
    empty = [n for i, n in enumerate(class_names) if i not in present]
    if empty:
        raise ValueError(
            f"'{path}': class(es) {empty} have no usable image"
            + (" once the bad files are left out" if report.bad else "")
            + f". Add images or drop the class(es). Received: class_names="
            f"{class_names}"
        )
    order = np.random.default_rng(seed).permutation(keep)
    paths = [report.path_for(files[i]) for i in order]
    labels = labels[order]
    split = int(round(len(order) * validation_split))
    train = _dataset(paths[split:], labels[split:], image_size, batch_size,
                     True, seed, interpolation)
    val = (
        _dataset(paths[:split], labels[:split], image_size, batch_size,
                 False, seed, interpolation)
        if split else None
    )
    settings = {
        "csv": os.path.abspath(path), "csv_stats": fingerprint.file_stats(path),
        "directory": report.directory, "image_size": image_size,
        "interpolation": interpolation, "seed": seed,
        "validation_split": validation_split,
        "skip_bad_files": skip_bad_files, "augmentation": None,
    }
    subsets = (("training", order[split:]), ("validation", order[:split]))
    for dataset, (subset, rows) in zip((train, val), subsets, strict=True):
        if dataset is not None:
            dataset.class_names = class_names
            dataset.transfer_preflight = report
            dataset.transfer_fingerprint = {
                "kind": "image_csv", **settings, "subset": subset,
                "files": {
                    fingerprint.portable_name(files[i]):
                        report.stats.get(files[i]) for i in rows
                },
            }
    return train, val, class_names


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
    interpolation="bilinear",
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
        interpolation: how images are resized, one of
            `transfer.backbones.spec.INTERPOLATIONS` (see
            `transfer.load_image_folder`). Defaults to `"bilinear"`.

    Returns:
        `(train_ds, val_ds, target_columns)`; `val_ds` is `None` without a
        split.

    Example:

    >>> import csv
    >>> import os
    >>> os.makedirs("data/images")
    >>> x, _ = transfer.synthetic_images(6, 32)
    >>> rows = [["file", "cat", "dog", "outdoor"]]
    >>> for i, image in enumerate(x):
    ...     keras.utils.save_img(f"data/images/{i}.png", image)
    ...     rows.append([f"images/{i}.png", i % 2, 1 - i % 2, int(i < 3)])
    >>> with open("data/tags.csv", "w", newline="") as f:
    ...     csv.writer(f).writerows(rows)
    >>> train, val, labels = transfer.load_image_table(
    ...     "data/tags.csv", ["cat", "dog", "outdoor"], image_size=32,
    ...     validation_split=0)
    >>> images, targets = next(iter(train))
    >>> tuple(images.shape), tuple(targets.shape)
    ((6, 32, 32, 3), (6, 3))
    """
    check_interpolation(interpolation)
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
                     True, seed, interpolation)
    val = (_dataset(paths[:split], targets[:split], image_size, batch_size,
                    False, seed, interpolation) if split else None)
    names = [str(c) for c in target_columns]
    for dataset in (train, val):
        if dataset is not None:
            dataset.class_names = names
            dataset.transfer_preflight = report
    return train, val, names
