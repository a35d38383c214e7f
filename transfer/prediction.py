"""Predicting on files: a run's model on image (or `.txt`) files and folders.

`predict_files` returns every file's top-k classes; `iter_predictions`,
its streaming form, yields them batch by batch (what `transfer predict`
writes out as it goes). `image_outputs` and `labelled_outputs` are its
two steps for images already read, which `transfer serve` shares:
probabilities are calibrated with the model's temperature, and
`reject_below` labels inputs `unknown` (`transfer.calibration`).
`expand_files` and `skipped_files` say which files
of the folders given are read, with the extensions training reads.
"""

import collections
import logging
import os

import numpy as np

from transfer import _backend
from transfer import _model_info
from transfer import calibration
from transfer.data import image_files
from transfer.data import streams
from transfer.data.image_files import IMAGE_EXTENSIONS
from transfer.data.text import load_text_csv
from transfer.workflow import TEXT_EXTENSIONS
from transfer.workflow import is_table
from transfer.workflow import run_class_names
from transfer.workflow import run_modality
from transfer.workflow import run_takes_pairs

logger = logging.getLogger(__name__)


def _walk(folder):
    """The files under `folder`, sorted, hidden folders left out."""
    return sorted(image_files.visible_files(folder))


def _extensions(modality):
    return IMAGE_EXTENSIONS if modality == "image" else TEXT_EXTENSIONS


def expand_files(paths, modality="image"):
    """Files named by `paths`, directories expanded (recursively, sorted).

    Directories give their files with the modality's extensions
    (`transfer.data.image_files.IMAGE_EXTENSIONS`, the list training reads,
    or `.txt`), hidden files and folders (`.name`, macOS `._name`) skipped;
    a file named directly must have one of those extensions too. `skipped_files` lists the other files.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a directory holds no file of the modality's kinds, or a
            file has another extension.
    """
    extensions = _extensions(modality)
    files, hidden = [], 0
    for path in paths:
        if os.path.isdir(path):
            found = []
            for file in _walk(path):
                if not file.lower().endswith(extensions):
                    continue
                if image_files.is_hidden(os.path.basename(file)):
                    hidden += 1
                else:
                    found.append(file)
            if not found:
                raise ValueError(
                    f"No {', '.join(extensions)} files in folder '{path}'. "
                    f"Received: {path!r}"
                )
            files.extend(sorted(found))
        elif os.path.isfile(path):
            if not path.lower().endswith(extensions):
                raise ValueError(
                    f"'{path}' is not a file type this {modality} model "
                    f"reads ({', '.join(extensions)}): training would not "
                    "read it either. Convert it (e.g. to PNG). "
                    f"Received: {path!r}"
                )
            files.append(path)
        else:
            raise FileNotFoundError(
                f"No such file or folder: '{path}'. Pass existing image "
                f"files or folders. Received: {path!r}"
            )
    if hidden:
        logger.info("Skipped %d hidden file(s) (names starting with '.').",
                    hidden)
    return files


def skipped_files(paths, modality="image"):
    """Files inside the folders of `paths` that `expand_files` leaves out.

    Example:

    >>> os.makedirs("photos")
    >>> for name in ("rose.jpg", "notes.txt"):
    ...     open(os.path.join("photos", name), "w").close()
    >>> transfer.prediction.skipped_files(["photos"])
    ['photos/notes.txt']
    """
    extensions = _extensions(modality)
    return [f for path in paths if os.path.isdir(path)
            for f in _walk(path) if not f.lower().endswith(extensions)
            and not image_files.is_hidden(os.path.basename(f))]


def _outputs(model, inputs, batch_size):
    return np.asarray(
        model.predict(inputs, batch_size=batch_size, verbose=0),
        dtype="float64",
    )


def probabilities(model, inputs, batch_size=32):
    """Class probabilities of `model` on `inputs`: the softmax of its logits
    divided by its temperature (`transfer.calibration`)."""
    return calibration.calibrated_probabilities(
        model, _outputs(model, inputs, batch_size))


PredictionBatch = collections.namedtuple(
    "PredictionBatch", ["results", "skipped"]
)


def _check_top_k(top_k, class_names):
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not (
        1 <= top_k <= len(class_names)
    ):
        raise ValueError(
            f"`top_k` must be between 1 and the number of classes "
            f"({len(class_names)}). Received: top_k={top_k!r}"
        )


def top_k_classes(probabilities, class_names, top_k):
    """The `top_k` best classes of one row of probabilities, best first.

    Ties keep the classes' order. What `transfer predict` and
    `transfer serve` write for each image.

    Args:
        probabilities: one probability per class.
        class_names: the class names, in the model's order.
        top_k: how many classes, from 1 to `len(class_names)`.

    Returns:
        A list of `{"class": name, "probability": p}`.

    Example:

    >>> transfer.prediction.top_k_classes([0.2, 0.7, 0.1], ["a", "b", "c"], 2)
    [{'class': 'b', 'probability': 0.7}, {'class': 'a', 'probability': 0.2}]
    """
    row = np.asarray(probabilities)
    order = np.argsort(-row, kind="stable")[:top_k]
    return [{"class": class_names[i], "probability": float(row[i])}
            for i in order]


def labelled_outputs(model, outputs, class_names, top_k, reject_below=None):
    """One result per row of `model`'s raw `outputs`, calibrated.

    Each is `{"predictions": [{"class", "probability"}, ...]}` (the
    `top_k` best classes, `top_k_classes`, with the model's temperature);
    with `reject_below`, also `label` (the best class, or `"unknown"`),
    `unknown_reason` (`"low_confidence"`, `"out_of_distribution"` or
    `None`) and, where the model records an out-of-distribution threshold,
    `ood_score` (see `transfer.calibration.unknown_reasons`). What
    `transfer predict` and `transfer serve` answer.
    """
    if reject_below is None:
        return [{"predictions": top_k_classes(row, class_names, top_k)}
                for row in calibration.calibrated_probabilities(model,
                                                                outputs)]
    probs, reasons, scores = calibration.unknown_reasons(
        model, outputs, reject_below)
    results = []
    for i, row in enumerate(probs):
        top = top_k_classes(row, class_names, top_k)
        result = {"predictions": top,
                  "label": top[0]["class"] if reasons[i] is None
                  else calibration.UNKNOWN,
                  "unknown_reason": reasons[i]}
        if scores is not None:
            result["ood_score"] = round(float(scores[i]), 6)
        results.append(result)
    return results


def _top_k_results(names, outputs, model, top_k, reject_below):
    rows = labelled_outputs(model, outputs, run_class_names(model), top_k,
                            reject_below)
    return [{"file": name, **row}
            for name, row in zip(names, rows, strict=True)]


def _check_reject_below(reject_below, class_names):
    calibration.check_reject_below(reject_below)
    if reject_below is not None and calibration.UNKNOWN in class_names:
        raise ValueError(
            f"The model has a class named '{calibration.UNKNOWN}', the label "
            "`reject_below` gives to rejected inputs: the two could not be "
            "told apart. Predict without reject_below. Received: "
            f"class_names={class_names[:10]}"
        )


def image_outputs(model, images):
    """The model's raw outputs (logits or probabilities) on one batch of
    images, as `float64`, in one call (`predict_on_batch`)."""
    return np.asarray(
        _backend.predict_on_batch(model, np.asarray(images)), dtype="float64")


def image_probabilities(model, images):
    """Class probabilities of one batch of images, as `float64`.

    The batch goes through the model in one call (`predict_on_batch`), and
    logits become probabilities: the softmax of the logits divided by the
    model's temperature (`transfer.calibration`). `images` are what
    `transfer.data.image_files.read_image` returns at the model's input
    size, stacked: `iter_predictions` predicts every batch so, and
    `transfer serve` too.

    Args:
        model: an image classifier taking `[0, 255]` pixels.
        images: a `(batch, height, width, 3)` array.

    Returns:
        A `(batch, num_classes)` array.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, _ = transfer.synthetic_images(3, 32)
    >>> probs = transfer.prediction.image_probabilities(model, x)
    >>> probs.shape, np.allclose(probs.sum(-1), 1.0)
    ((3, 2), True)
    """
    return calibration.calibrated_probabilities(
        model, image_outputs(model, images))


def _read_tables(model, paths, columns):
    """`[(path, texts)]` of the CSV files among a text model's `paths`, and
    the other paths; pairs for a sentence-pair model, checked first."""
    if run_modality(model) != "text":
        return [], list(paths)
    first, second = columns
    pairs = run_takes_pairs(model)
    tables = [p for p in paths if is_table(p)]
    others = [p for p in paths if not is_table(p)]
    if pairs and (others or not second):
        raise ValueError(
            "This run's model classifies sentence pairs: pass CSV files "
            f"with its text columns {first!r} and {second!r}, one pair a "
            "row; a .txt file or folder holds single texts. "
            f"Received: {(others or paths)[:3]}"
        )
    if not pairs and second:
        second = None  # a single-text model reads the first column only
    read = []
    for path in tables:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No such CSV file: '{path}'. Received: {path!r}")
        texts, _, _ = load_text_csv(path, text_column=first,
                                    text_pair_column=second,
                                    label_column=None)
        read.append((path, texts))
    return read, others


def _iter_table_predictions(model, tables, top_k, batch_size, reject_below):
    """Results of CSV rows, named `path:row` (row 1 is the header)."""
    for path, texts in tables:
        pairs = isinstance(texts, tuple)
        count = len(texts[0]) if pairs else len(texts)
        for start in range(0, count, batch_size):
            part = slice(start, start + batch_size)
            x = (tuple(np.asarray(t[part], dtype=object) for t in texts)
                 if pairs else np.asarray(texts[part], dtype=object))
            outputs = _outputs(model, x, batch_size)
            names = [f"{path}:{row + 2}"
                     for row in range(start, start + len(outputs))]
            yield PredictionBatch(
                _top_k_results(names, outputs, model, top_k, reject_below),
                [])


def iter_predictions(model, paths, *, top_k=1, batch_size=32,
                     skip_bad_files=False, text_columns=("text", None),
                     reject_below=None):
    """Predicts files batch by batch, yielding each batch's results.

    The streaming form of `predict_files`, for folders of any size: files
    are decoded in threads a few batches ahead, predicted in batches of
    `batch_size`, and each batch's results are yielded as soon as they
    exist, so a caller can write them out before the next batch is read.
    Memory holds a few batches, not the files. A file that cannot be read
    stops the stream with an error naming it, after the results of the
    files before it were yielded; with `skip_bad_files=True` it is skipped
    and listed in its batch's `skipped`. Images are resized to the model's
    input with the interpolation it was trained with
    (`transfer_metadata["interpolation"]`; bilinear when it records none).

    Args:
        model: a classifier from `load_run` (its `transfer_metadata` names
            the classes) or any image classifier taking `[0, 255]` pixels.
        paths: image files (`.txt` files for text models) and folders,
            expanded by `expand_files`. Text models also take CSV files:
            one result per row, named `file.csv:<row>` (row 1 is the
            header).
        top_k: how many classes per file, best first. Defaults to `1`.
        batch_size: prediction batch size. Defaults to `32`.
        skip_bad_files: skip files that cannot be read instead of raising.
            Defaults to `False`.
        text_columns: `(text_column, text_pair_column)` of CSV files, for
            text models (`transfer.workflow.text_columns(config)` gives a
            run's). Defaults to `("text", None)`.
        reject_below: a probability in `(0, 1)`: files whose calibrated
            top probability is under it, or whose out-of-distribution
            score is above the model's recorded threshold, are labelled
            `"unknown"` (see `labelled_outputs`;
            `transfer.choose_reject_threshold` picks it). Defaults to
            `None` (no `label`).

    Yields:
        `PredictionBatch(results, skipped)`: `results` a list with one
        dict per file (`file`, and `predictions`, a list of `{"class":
        name, "probability": p}`, calibrated; with `reject_below`, also
        `label`, `unknown_reason` and `ood_score`), in the order of the
        files; `skipped` a list of `(file, reason)`.

    Raises:
        ValueError: bad `top_k` or `reject_below`, or a file that cannot be read (without
            `skip_bad_files`), when the stream reaches it.
        FileNotFoundError: a path does not exist (before any prediction).

    Example:

    >>> import os
    >>> os.makedirs("photos")
    >>> x, _ = transfer.synthetic_images(3, 32)
    >>> for i, image in enumerate(x):
    ...     keras.utils.save_img(f"photos/{i}.png", image)
    >>> with open("photos/3.png", "w") as f:  # not an image
    ...     _ = f.write("oops")
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> batches = transfer.prediction.iter_predictions(
    ...     model, ["photos"], batch_size=2, skip_bad_files=True)
    >>> for batch in batches:
    ...     print([r["file"] for r in batch.results],
    ...           [file for file, _ in batch.skipped])
    ['photos/0.png', 'photos/1.png'] []
    ['photos/2.png'] ['photos/3.png']
    """
    class_names = run_class_names(model)
    _check_top_k(top_k, class_names)
    _check_reject_below(reject_below, class_names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
        batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    modality = run_modality(model)
    tables, paths = _read_tables(model, paths, text_columns)
    files = expand_files(paths, modality) if paths or not tables else []
    yield from _iter_table_predictions(model, tables, top_k, batch_size,
                                       reject_below)
    image_size = None if modality == "text" else int(model.input_shape[1])
    kind = "UTF-8 text" if modality == "text" else "image"
    # Resized as training resized them (`fit_recipe` records it).
    for batch, reads in streams.read_batches(
        files, modality, image_size, batch_size,
        interpolation=_model_info.interpolation(model),
    ):
        good, inputs, skipped, failure = [], [], [], None
        for path, (value, reason) in zip(batch, reads, strict=True):
            if reason is None:
                good.append(path)
                inputs.append(value)
            elif skip_bad_files:
                skipped.append((path, reason))
            else:
                failure = (path, reason)
                break
        results = []
        if inputs:
            if modality == "text":
                outputs = _outputs(
                    model, np.asarray(inputs, dtype=object), batch_size)
            else:
                outputs = image_outputs(model, np.stack(inputs))
            results = _top_k_results(good, outputs, model, top_k,
                                     reject_below)
        if results or skipped:
            yield PredictionBatch(results, skipped)
        if failure is not None:
            path, reason = failure
            raise ValueError(
                f"Cannot read '{path}' as {kind} ({reason}). Remove it or "
                f"pass only {kind} files, or pass skip_bad_files=True to "
                "skip the files that cannot be read (the files before it "
                f"were predicted). Received: {path!r}"
            )


def predict_files(model, paths, *, top_k=1, batch_size=32,
                  skip_bad_files=False, reject_below=None):
    """Top-k classes and probabilities of a classifier on files.

    Files are read and predicted batch by batch (`iter_predictions`); use
    `iter_predictions` itself to handle each batch's results as they come,
    without holding them all.

    Args:
        model: a classifier from `load_run` (its `transfer_metadata` names
            the classes) or any image classifier taking `[0, 255]` pixels.
        paths: image files (`.txt` files for text models) and folders.
        top_k: how many classes per file, best first. Defaults to `1`.
        batch_size: prediction batch size. Defaults to `32`.
        skip_bad_files: leave out files that cannot be read (logged as a
            warning) instead of raising. Defaults to `False`.
        reject_below: a probability in `(0, 1)`: label a file `"unknown"`
            when its calibrated top probability is under it or it is unlike
            the training data (see `iter_predictions`). Defaults to `None`.

    Returns:
        A list with one dict per file: `file` and `predictions`, a list of
        `{"class": name, "probability": p}` (calibrated); with
        `reject_below`, also `label`, `unknown_reason` and `ood_score`.

    Raises:
        ValueError: bad `top_k` or `reject_below`, or a file that cannot be read (the error
            names it), unless `skip_bad_files`.

    Example:

    >>> import os
    >>> os.makedirs("photos")
    >>> x, _ = transfer.synthetic_images(3, 32)
    >>> for i, image in enumerate(x):
    ...     keras.utils.save_img(f"photos/{i}.png", image)
    >>> # A model from `load_run` names its classes; this one says "0", "1".
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> results = transfer.prediction.predict_files(model, ["photos"], top_k=2)
    >>> [result["file"] for result in results]
    ['photos/0.png', 'photos/1.png', 'photos/2.png']
    >>> sorted(p["class"] for p in results[0]["predictions"])
    ['0', '1']
    >>> round(sum(p["probability"] for p in results[0]["predictions"]), 6)
    1.0
    >>> # Sure of nothing: at reject_below=0.99 every file is "unknown".
    >>> results = transfer.prediction.predict_files(
    ...     model, ["photos"], reject_below=0.99)
    >>> [(r["label"], r["unknown_reason"]) for r in results][0]
    ('unknown', 'low_confidence')
    """
    results, skipped = [], []
    for batch in iter_predictions(model, paths, top_k=top_k,
                                  batch_size=batch_size,
                                  skip_bad_files=skip_bad_files,
                                  reject_below=reject_below):
        results.extend(batch.results)
        skipped.extend(batch.skipped)
    if skipped:
        logger.warning(
            "Skipped %d file(s) that cannot be read: %s", len(skipped),
            "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
            + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""),
        )
    return results
