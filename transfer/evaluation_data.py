"""Labelled evaluation data of a run: which folder, split and files.

`labelled_dataset` streams a labelled folder for a run's model (what
`transfer evaluate` and `transfer report` read), `load_labelled_data`
reads it into `(x, y)` arrays. A split root is evaluated on its `test/`
folder; `validation_only` rebuilds the run's own validation split.
"""

import collections
import logging
import os

import numpy as np

from transfer import _model_info
from transfer import run_config
from transfer.data import streams
from transfer.data.images import load_image_folder
from transfer.data.layout import SPLIT_FILES
from transfer.data.layout import detect_layout
from transfer.data.layout import parse_file_list
from transfer.data.streams import LabelledDataset  # noqa: F401 (public here)
from transfer.data.text import load_text_csv
from transfer.data.text import load_text_folder
from transfer.data.text import split_texts
from transfer.training import run_dir as run_dir_lib
from transfer.workflow import is_table
from transfer.workflow import run_class_names
from transfer.workflow import run_modality
from transfer.workflow import run_takes_pairs
from transfer.workflow import text_columns

logger = logging.getLogger(__name__)


class LabelledData(tuple):
    """`(x, y)` evaluation arrays that know which files they were read from.

    It unpacks and is passed like the `(x, y)` tuple it is; `directory`
    (the data folder) and `file_paths` (each example's file relative to
    it, in the order of `x`, or `None` where unknown) let
    `transfer.run_report.write_run_report` name the data and its worst
    examples.

    Args:
        x: the inputs.
        y: the class indices.
        directory: the data folder. Defaults to `None`.
        file_paths: one path per example, relative to `directory`.
            Defaults to `None`.
    """

    def __new__(cls, x, y, directory=None, file_paths=None):
        data = super().__new__(cls, (x, y))
        data.directory = directory
        data.file_paths = file_paths
        return data


_Source = collections.namedtuple(
    "_Source", ["folder", "split", "seed", "files", "stratify"],
    defaults=(None, None, None, True),
)


def _test_folder(layout):
    """The folder a split root is evaluated on: `test/`, else `val/`."""
    if layout.test is not None:
        return layout.test
    if layout.val is not None:
        logger.warning("'%s' has no test/ folder: evaluating on its "
                       "validation folder '%s'.", layout.root, layout.val)
        return layout.val
    raise ValueError(
        f"'{layout.root}' has a train/ folder but no test/ or val/ folder to "
        f"evaluate on. Add '{layout.root}/test/<class>/<file>', or pass a "
        f"folder of class folders. Received: data={layout.root!r}"
    )


def _listed_validation_files(run_dir, layout):
    """The run's validation files from its split file, relative to
    `layout.train`; `None` for runs without one."""
    path = None if run_dir is None else run_dir_lib.path(
        run_dir, SPLIT_FILES["val"])
    if path is None or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = parse_file_list(f.read())
    missing = [name for name in names
               if not os.path.isfile(os.path.join(layout.root, name))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(names)} validation file(s) listed in "
            f"'{path}' are missing from '{layout.root}', e.g. {missing[:3]}. "
            "Restore them, or evaluate on another labelled folder (`transfer "
            f"evaluate RUN --data DIR`). Received: data={layout.root!r}"
        )
    return [os.path.relpath(os.path.join(layout.root, name), layout.train)
            for name in names]


def _evaluation_source(data_dir, config, validation_only, run_dir):
    """Which folder, split and files `labelled_dataset` reads."""
    layout = detect_layout(data_dir)
    if validation_only and layout.val is not None:
        return _Source(layout.val)
    if not validation_only and layout.is_split:
        return _Source(_test_folder(layout))
    if not (validation_only and config and config.get("validation_split")):
        return _Source(layout.train)
    return _Source(
        layout.train, config["validation_split"],
        # seed 0 is a valid seed: keep it (`seed or default` did not).
        config.get("seed", run_config.DEFAULTS["seed"]),
        _listed_validation_files(run_dir, layout),
        # Runs from before stratified splits hold no "split" key.
        stratify=bool(config.get("split")),
    )


def _image_evaluation_data(source, model, batch_size, verbose,
                           skip_bad_files):
    folder, split = source.folder, source.split
    if source.files is not None:
        split = 0  # the listed files are the validation split
    # The validation split is never shuffled; every file is read
    # unshuffled too, so that the batches follow `file_paths`. Resized as
    # training resized (runs that record no interpolation: bilinearly).
    train, val, names = load_image_folder(
        folder, image_size=int(model.input_shape[1]),
        interpolation=_model_info.interpolation(model),
        batch_size=batch_size, validation_split=split or 0,
        seed=source.seed or 0, verbose=0,
        skip_bad_files=skip_bad_files,
        shuffle=bool(split) and not source.stratify, files=source.files,
        stratify=source.stratify,
    )
    dataset = val if split else train
    return streams.LabelledDataset(
        dataset, folder,
        [os.path.relpath(path, folder) for path in dataset.file_paths],
        list(names), verbose=verbose,
    ), names


def labelled_dataset(data_dir, model, config=None, *, validation_only=False,
                     batch_size=32, verbose=0, run_dir=None,
                     skip_bad_files=None):
    """Labelled evaluation data for a run's model, streamed from disk.

    For image runs, a `LabelledDataset`: a `tf.data` pipeline over the
    folder (parallel decode, prefetch) in a fixed order (the validation
    split's, or every file's sorted order), resized to the model's input
    with the interpolation it was trained with, with each example's file in
    `file_paths`; memory holds a few batches, whatever the size of the
    folder. `transfer evaluate` and `transfer report` read their data so.
    Text runs get a `LabelledData` (texts are small).

    A split root (`transfer.data.layout.detect_layout`) is evaluated on
    its `test/` folder, or on its validation folder when it has no
    `test/` (with a warning), and `validation_only` reads its validation folder.
    For a class-folder root, `validation_only` rebuilds the run's split:
    from the run's `split_val.txt` when `run_dir` has one, else as the run
    made it (stratified, or Keras's own split for runs made before).

    Args:
        data_dir: a folder with one subfolder per class, with the classes
            the model was trained on, or a split root.
        model: the run's model (for its input size, classes, modality).
        config: the run's config, for the split. Defaults to `None`.
        validation_only: the run's validation split of `data_dir` (same
            split and seed as training) instead of every file.
            Defaults to `False`.
        batch_size: images per batch. Defaults to `32`.
        verbose: `1` shows a progress bar while the data is read.
            Defaults to `0`.
        run_dir: the run directory, whose split files name the validation
            files. Defaults to `None`.
        skip_bad_files: leave out images that cannot be read (the
            preflight names them before any is predicted; the dataset's
            `transfer_preflight` lists them) instead of raising. Defaults
            to `None`: the run's own setting (`config["skip_bad_files"]`).

    Returns:
        A `LabelledDataset` (images) or a `LabelledData` (text).

    Raises:
        ValueError: the folder's classes differ from the model's, or a
            split root with nothing to evaluate on.
        FileNotFoundError: a file of the run's split file is missing.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(6, 48, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     os.makedirs(f"test/{label}", exist_ok=True)
    ...     keras.utils.save_img(f"test/{label}/{i}.png", image)
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> data = transfer.evaluation_data.labelled_dataset(
    ...     "test", model, batch_size=4)
    >>> [tuple(images.shape) for images, _ in data]
    [(4, 32, 32, 3), (2, 32, 32, 3)]
    >>> data.file_paths[:2]
    ['0/0.png', '0/2.png']
    """
    class_names = run_class_names(model)
    if run_modality(model) == "text" and is_table(data_dir):
        return _text_table_data(data_dir, model, config, validation_only)
    source = _evaluation_source(data_dir, config, validation_only, run_dir)
    if run_modality(model) == "text":
        train, val, names = load_text_folder(
            source.folder, validation_split=source.split or 0,
            seed=source.seed or 0,
        )
        pair = val if source.split else train
        data = LabelledData(np.asarray(pair[0], dtype=object),
                            np.asarray(pair[1]), source.folder, None)
    else:
        if skip_bad_files is None:
            skip_bad_files = bool(config and config.get("skip_bad_files"))
        data, names = _image_evaluation_data(source, model, batch_size,
                                             verbose, skip_bad_files)
    if list(names) != class_names:
        raise ValueError(
            f"The classes of '{source.folder}' {list(names)} differ from the "
            f"model's {class_names}. Evaluate on a folder with the same class "
            f"subfolders. Received: data={data_dir!r}"
        )
    return data


def _text_table_data(path, model, config, validation_only):
    """A text run's labelled CSV file (or its validation split), read with
    the run's columns; a sentence-pair model needs both of its columns."""
    first, second = text_columns(config)
    if run_takes_pairs(model) and not second:
        raise ValueError(
            f"This run's model classifies sentence pairs, but its config "
            f"names no second text column, so '{path}' cannot be read as "
            "pairs. Restore the run's config.json (text_pair_column). "
            f"Received: data={path!r}"
        )
    texts, labels, _ = load_text_csv(
        path, text_column=first, text_pair_column=second,
        label_column=(config or {}).get("label_column") or "label",
        class_names=run_class_names(model))
    if validation_only:
        _, (texts, labels) = split_texts(
            texts, labels, config["validation_split"], config["seed"])
    if second:
        x = tuple(np.asarray(part, dtype=object) for part in texts)
    else:
        x = np.asarray(texts, dtype=object)
    return LabelledData(x, np.asarray(labels), path, None)


def load_labelled_data(data_dir, model, config=None, *, validation_only=False,
                       run_dir=None):
    """Labelled evaluation data for a run's model, as `(x, y)` arrays.

    Reads `labelled_dataset(...)` into memory: use it for folders that fit
    (the arrays take `n * size * size * 3 * 4` bytes), and
    `labelled_dataset` itself, which streams, for the others. Images come
    in a fixed order (the validation split's, or every file's sorted
    order), so that each example's file is known: the result is a
    `LabelledData`, an `(x, y)` tuple with `directory` and `file_paths`.

    Args:
        data_dir: a folder with one subfolder per class, with the classes
            the model was trained on.
        model: the run's model (for its input size, classes, modality).
        config: the run's config, for the split. Defaults to `None`.
        validation_only: return the run's validation split of `data_dir`
            (same split and seed as training) instead of every file.
            Defaults to `False`.
        run_dir: the run directory, whose split files name the validation
            files (see `labelled_dataset`). Defaults to `None`.

    Returns:
        A `LabelledData`: `x, y = load_labelled_data(...)` unpacks it.

    Raises:
        ValueError: the folder's classes differ from the model's.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(6, 48, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     os.makedirs(f"test/{label}", exist_ok=True)
    ...     keras.utils.save_img(f"test/{label}/{i}.png", image)
    >>> # Its classes are "0" and "1", like the folder's.
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> data = transfer.evaluation_data.load_labelled_data("test", model)
    >>> images, labels = data
    >>> images.shape, sorted(labels.tolist())  # resized to the model's 32
    ((6, 32, 32, 3), [0, 0, 0, 1, 1, 1])
    >>> data.file_paths[0], int(labels[0])
    ('0/0.png', 0)
    """
    data = labelled_dataset(data_dir, model, config,
                            validation_only=validation_only, run_dir=run_dir)
    if isinstance(data, LabelledData):
        return data
    # One array per part, filled batch by batch: no second copy.
    x = y = None
    filled = 0
    for images, labels in data:
        images, labels = np.asarray(images), np.asarray(labels)
        if x is None:
            x = np.empty((len(data.file_paths), *images.shape[1:]),
                         images.dtype)
            y = np.empty(len(data.file_paths), labels.dtype)
        x[filled : filled + len(images)] = images
        y[filled : filled + len(labels)] = labels
        filled += len(images)
    return LabelledData(x[:filled], y[:filled], data_dir, data.file_paths)


def training_images(run_dir, config, model, *, max_images=200, seed=0):
    """Up to `max_images` images of a run's training split, as float32.

    Representative images for calibrating an int8 export: the files listed
    in the run's `split_train.txt` (or, for a split root, its `train/`
    folder), a seeded sample of them, read as `transfer predict` reads
    files (RGB, `[0, 255]`, resized to the model's size with the
    interpolation it was trained with).

    Returns:
        A float32 array `(n, size, size, 3)`, `n <= max_images`.

    Raises:
        ValueError: the run records no image training data that still
            exists (pass `--calibration-data DIR` instead).
    """
    from transfer.data import image_files

    data_dir = (config or {}).get("data")
    if not data_dir or not os.path.isdir(data_dir):
        raise ValueError(
            f"The training data of '{run_dir}' is not there to calibrate on "
            f"(config data={data_dir!r}). Pass calibration_data (--calibration"
            "-data DIR), a folder of the run's classes. "
            f"Received: run_dir={run_dir!r}"
        )
    layout = detect_layout(data_dir)
    listed = run_dir_lib.path(run_dir, SPLIT_FILES["train"])
    if os.path.exists(listed):
        with open(listed, encoding="utf-8") as f:
            files = [os.path.join(layout.root, name)
                     for name in parse_file_list(f.read())]
    else:
        files = [os.path.join(folder, name)
                 for folder, _, names in sorted(os.walk(layout.train))
                 for name in sorted(names)
                 if name.lower().endswith(image_files.KERAS_EXTENSIONS)]
    files = [f for f in files if os.path.isfile(f)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(files))[:max_images])
    size = int(model.input_shape[1])
    method = _model_info.interpolation(model)
    images = [image_files.read_image(files[i], size, interpolation=method)
              for i in chosen]
    if not images:
        return np.zeros((0, size, size, 3), "float32")
    return np.stack(images).astype("float32")
