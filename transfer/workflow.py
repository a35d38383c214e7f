"""Whole runs from a folder: train, reload, predict on files, evaluate.

These functions are what `transfer train|evaluate|predict` call; they are
plain library functions, usable from Python too. Every model they return is
a plain `keras.Model`.
"""

import collections
import logging
import os

import numpy as np

from transfer import _backend
from transfer import _model_info
from transfer import run_config
from transfer._io import read_json_checked
from transfer.backbones.resolve import get_backbone_spec
from transfer.data import image_files
from transfer.data import streams
from transfer.data.image_files import IMAGE_EXTENSIONS
from transfer.data.images import default_augmentation
from transfer.data.images import describe_augmentation
from transfer.data.images import load_image_folder
from transfer.data.layout import SPLIT_FILES
from transfer.data.layout import detect_layout
from transfer.data.layout import format_file_list
from transfer.data.layout import parse_file_list
from transfer.data.streams import LabelledDataset  # noqa: F401 (public here)
from transfer.data.text import load_text_folder
from transfer.models.classifier import build_classifier
from transfer.models.text import build_text_classifier
from transfer.saving import load_model
from transfer.training import run_dir as run_dir_lib
from transfer.training.engines import distribution_scope
from transfer.training.fit import fit_recipe
from transfer.training.lock import check_free
from transfer.training.recipe import Recipe

logger = logging.getLogger(__name__)
TEXT_EXTENSIONS = (".txt",)


def detect_modality(directory):
    """`"image"` or `"text"`: which kind of files a class folder tree holds.

    Raises:
        FileNotFoundError: `directory` does not exist.
        ValueError: it holds neither images nor `.txt` files.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Data folder '{directory}' does not exist. Pass a folder with one "
            f"subfolder per class. Received: data={directory!r}"
        )
    counts = {"image": 0, "text": 0}
    for path in _files(directory):
        name = os.path.basename(path)
        if image_files.is_hidden(name):
            continue
        if name.lower().endswith(IMAGE_EXTENSIONS):
            counts["image"] += 1
        elif name.lower().endswith(TEXT_EXTENSIONS):
            counts["text"] += 1
    if not any(counts.values()):
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) or .txt files under "
            f"'{directory}'. Expected <data>/<class>/<file>. "
            f"Received: data={directory!r}"
        )
    return max(counts, key=counts.get)


def _image_weights(weights):
    return "imagenet" if weights == "pretrained" else weights


def _augmented(train, seed):
    import tensorflow as tf

    layers = list(default_augmentation(seed).layers)
    fingerprint = dict(train.transfer_fingerprint,
                       augmentation=describe_augmentation(layers, seed))

    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return images, labels

    augmented = train.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    augmented.class_names = train.class_names
    augmented.transfer_preflight = train.transfer_preflight
    augmented.transfer_fingerprint = fingerprint
    return augmented


def train_run(config, run_dir, *, verbose=1, force_resume=False):
    """Trains a classifier on `config["data"]` as a resolved config says.

    Checks the backbone name, the data folder and the run directory first,
    then reads the data (image preflight with a progress bar), builds the
    classifier (preparing its weights) and runs `transfer.fit_recipe`,
    which saves the config as `run_dir/config.json` once it holds the run
    directory's lock and has checked the run's state: a refused call leaves
    `run_dir` as it was. Rerunning an interrupted run resumes it, if its
    data and settings are unchanged (see `fit_recipe`).

    `config["data"]` is a class-folder root or a split root
    (`transfer.data.layout.detect_layout`). A split root with a validation
    folder is used as given: training on `train/`, validating on `val/`
    (or `valid/`, `validation/`), never split again; `validation_split` is
    then ignored, with an INFO log (it has a default, so it cannot be told
    apart from one set on purpose). Otherwise the class-folder root (or
    `train/`) is split, seeded and stratified, and the split is written
    with `config.json` as `split_train.txt` and `split_val.txt` (image
    runs: one file a line, relative to the data root), from which
    `labelled_dataset(..., validation_only=True)` rebuilds it.

    Args:
        config: a config from `transfer.run_config.resolve_config`.
        run_dir: the run directory.
        verbose: `0` silent, `1` progress bars. Defaults to `1`.
        force_resume: resume although the data or settings differ from
            the interrupted run's (see `fit_recipe`). Defaults to `False`.

    Returns:
        The trained `keras.Model`.

    Raises:
        ValueError, FileNotFoundError: bad data, backbone or run directory,
            before anything is trained.

    Example:

    >>> import os
    >>> x, y = transfer.synthetic_images(12, 32, 2)
    >>> for i, (image, label) in enumerate(zip(x, y)):
    ...     folder = os.path.join("pets", ["cat", "dog"][label])
    ...     os.makedirs(folder, exist_ok=True)
    ...     keras.utils.save_img(os.path.join(folder, f"{i}.png"), image)
    >>> config = transfer.run_config.resolve_config(None, {
    ...     "data": "pets", "backbone": "small_cnn", "weights": "none",
    ...     "batch_size": 4, "validation_split": 0, "augment": False,
    ...     "stages": [{"name": "head", "epochs": 1, "learning_rate": 1e-3}],
    ... })
    >>> model = transfer.workflow.train_run(config, "runs/pets", verbose=0)
    >>> model.output_shape
    (None, 2)
    >>> sorted(os.listdir("runs/pets"))
    ['.transfer.lock', 'checkpoints', 'config.json', 'logs', 'manifest.json',
     'model.keras', 'recipe.json', 'report']
    """
    layout = detect_layout(config["data"])
    modality = config["modality"]
    if modality == "auto":
        modality = detect_modality(layout.train)
    spec = get_backbone_spec(config["backbone"], modality=modality)
    run_dir_lib.check_run_dir(run_dir)
    check_free(run_dir)  # fail fast; fit_recipe checks again, locked
    recipe = Recipe.from_config({
        "stages": config["stages"],
        "jit_compile": config.get("jit_compile", "auto"),
    })
    resolved = dict(config, modality=modality,
                    data=os.path.abspath(config["data"]))
    if config.get("feature_cache_dir"):
        resolved["feature_cache_dir"] = os.path.abspath(
            os.path.expanduser(config["feature_cache_dir"]))
    if layout.val is not None and config["validation_split"]:
        logger.info(
            "'%s' has its own validation folder '%s': validation_split=%s "
            "is ignored.", layout.root, layout.val, config["validation_split"])
    resolved["split"] = "folders" if layout.val is not None else "stratified"
    run_files = {}
    if modality == "image":
        image_size = config["image_size"] or spec.image_size
        resolved["image_size"] = image_size
        train, val, class_names = _image_parts(layout, config, image_size,
                                               verbose)
        run_files.update(_split_files(layout, train, val))
        if config["augment"]:
            train = _augmented(train, config["seed"])
        # Variables live where they are made: build in the engine's scope.
        with distribution_scope(config["distribute"]):
            model = build_classifier(
                spec, len(class_names),
                weights=_image_weights(config["weights"]),
                image_size=image_size, dropout=config["dropout"],
                precision=config.get("precision", "float32"),
            )
    else:
        train, val, class_names = _text_parts(layout, config)
        with distribution_scope(config["distribute"]):
            model = build_text_classifier(
                config["backbone"], len(class_names),
                weights=config["weights"],
                sequence_length=config["sequence_length"],
                dropout=config["dropout"],
            )
    resolved["class_names"] = list(class_names)
    run_files[run_config.CONFIG_FILE] = run_config.dumps(resolved)
    fit_recipe(
        model, recipe, train, val, run_dir=run_dir,
        batch_size=config["batch_size"], class_names=class_names,
        verbose=verbose, distribute=config["distribute"],
        feature_cache_dir=resolved.get("feature_cache_dir"),
        force_resume=force_resume, run_files=run_files,
    )
    return model


def _image_parts(layout, config, image_size, verbose):
    """`(train, val, class_names)` of a layout's image folders."""
    common = dict(image_size=image_size, batch_size=config["batch_size"],
                  seed=config["seed"],
                  skip_bad_files=config["skip_bad_files"], verbose=verbose)
    if layout.val is None:
        return load_image_folder(
            layout.train, validation_split=config["validation_split"],
            **common)
    train, _, class_names = load_image_folder(
        layout.train, validation_split=0, **common)
    val, _, _ = load_image_folder(layout.val, validation_split=0,
                                  shuffle=False, **common)
    return train, val, class_names


def _text_parts(layout, config):
    """`(train, val, class_names)` of a layout's text folders."""
    if layout.val is None:
        return load_text_folder(
            layout.train, validation_split=config["validation_split"],
            seed=config["seed"])
    train, _, class_names = load_text_folder(layout.train,
                                             validation_split=0)
    val, _, _ = load_text_folder(layout.val, validation_split=0)
    return train, val, class_names


def _split_files(layout, train, val):
    """The seeded split of a root without a validation folder, as the run's
    split files: paths relative to the data root."""
    if layout.val is not None or val is None:
        return {}
    return {
        SPLIT_FILES[part]: format_file_list(
            os.path.relpath(path, layout.root) for path in dataset.file_paths)
        for part, dataset in (("train", train), ("val", val))
    }


def load_run(run_dir):
    """The trained model of a finished run, and the run's config.

    The class names come from the run's `manifest.json`. When it is missing
    or unreadable, they are rebuilt from the run's `config.json` (runs of
    `train_run`), with a warning that names both files; with neither, the
    call fails: a model never comes back labelling classes "0", "1"...
    when its run knew their names.

    Args:
        run_dir: the run directory, holding `model.keras`.

    Returns:
        `(model, config)`; `config` is `None` for runs not made by
        `train_run`. `model.transfer_metadata` holds `class_names`.

    Raises:
        FileNotFoundError: no `model.keras` in `run_dir`.
        ValueError: `manifest.json` is missing or unreadable and
            `config.json` names no classes (the message names the files).

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> transfer.save_model(model, "runs/a/model.keras")
    'runs/a/model.keras'
    >>> transfer.workflow.load_run("runs/a")  # no manifest.json: not a run
    Traceback (most recent call last):
        ...
    ValueError: The class names of 'runs/a' are unknown: ...
    >>> transfer.workflow.load_run("runs/b")
    Traceback (most recent call last):
        ...
    FileNotFoundError: No trained model in 'runs/b' (looked for ...
    """
    path = run_dir_lib.path(run_dir, run_dir_lib.MODEL)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No trained model in '{run_dir}' (looked for {path}). Pass the "
            "directory of a finished `transfer train` run. "
            f"Received: run_dir={run_dir!r}"
        )
    manifest_path = run_dir_lib.path(run_dir, run_dir_lib.MANIFEST)
    config_path = run_dir_lib.path(run_dir, run_config.CONFIG_FILE)
    try:
        manifest = read_json_checked(manifest_path)
        problem = None if manifest is not None else "is missing"
    except ValueError as e:
        manifest, problem = None, f"is unreadable ({e})"
    model = load_model(path)
    try:
        config = read_json_checked(config_path)
    except ValueError as e:
        if problem is None:
            raise
        config, problem = None, f"{problem}, and '{config_path}' {e}"
    if problem is None:  # the manifest is the source of truth
        return model, config
    names = (config or {}).get("class_names")
    if not names:
        raise ValueError(
            f"The class names of '{run_dir}' are unknown: '{manifest_path}' "
            f"{problem}, and '{config_path}' does not name them either. "
            "Restore manifest.json from a copy of the run directory, or "
            f"train the run again. Received: run_dir={run_dir!r}"
        )
    logger.warning(
        "'%s' %s; the run's class names %s are taken from '%s'.",
        manifest_path, problem, names, config_path,
    )
    metadata = dict(getattr(model, "transfer_metadata", None) or {})
    metadata.update(
        class_names=list(names),
        modality=config.get("modality") or metadata.get("modality"),
        backbone=metadata.get("backbone") or config.get("backbone"),
    )
    model.transfer_metadata = metadata
    return model, config


def run_modality(model):
    """`"text"` for text classifiers, else `"image"`."""
    metadata = getattr(model, "transfer_metadata", None) or {}
    return metadata.get("modality") or "image"


def run_class_names(model):
    """The class names a run's model was trained with, or `"0"`, `"1"`..."""
    metadata = getattr(model, "transfer_metadata", None) or {}
    names = metadata.get("class_names")
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(model.output_shape[-1]))]


def _files(folder):
    """The files under `folder`, hidden folders left out (not sorted)."""
    for root, folders, names in os.walk(folder):
        folders[:] = [d for d in folders if not image_files.is_hidden(d)]
        yield from (os.path.join(root, name) for name in names)


def _walk(folder):
    """The files under `folder`, sorted, hidden folders left out."""
    return sorted(_files(folder))


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
    >>> transfer.workflow.skipped_files(["photos"])
    ['photos/notes.txt']
    """
    extensions = _extensions(modality)
    return [f for path in paths if os.path.isdir(path)
            for f in _walk(path) if not f.lower().endswith(extensions)
            and not image_files.is_hidden(os.path.basename(f))]


def probabilities(model, inputs, batch_size=32):
    """Class probabilities of `model` on `inputs` (softmax of logits)."""

    outputs = np.asarray(
        model.predict(inputs, batch_size=batch_size, verbose=0),
        dtype="float64",
    )
    return _softmax_if_logits(model, outputs)


def _softmax_if_logits(model, outputs):
    if not _model_info.is_logits(model):
        return outputs
    shifted = np.exp(outputs - outputs.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


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


def iter_predictions(model, paths, *, top_k=1, batch_size=32,
                     skip_bad_files=False):
    """Predicts files batch by batch, yielding each batch's results.

    The streaming form of `predict_files`, for folders of any size: files
    are decoded in threads a few batches ahead, predicted in batches of
    `batch_size`, and each batch's results are yielded as soon as they
    exist, so a caller can write them out before the next batch is read.
    Memory holds a few batches, not the files. A file that cannot be read
    stops the stream with an error naming it, after the results of the
    files before it were yielded; with `skip_bad_files=True` it is skipped
    and listed in its batch's `skipped`.

    Args:
        model: a classifier from `load_run` (its `transfer_metadata` names
            the classes) or any image classifier taking `[0, 255]` pixels.
        paths: image files (`.txt` files for text models) and folders,
            expanded by `expand_files`.
        top_k: how many classes per file, best first. Defaults to `1`.
        batch_size: prediction batch size. Defaults to `32`.
        skip_bad_files: skip files that cannot be read instead of raising.
            Defaults to `False`.

    Yields:
        `PredictionBatch(results, skipped)`: `results` a list with one
        dict per file (`file`, and `predictions`, a list of `{"class":
        name, "probability": p}`), in the order of the files; `skipped` a
        list of `(file, reason)`.

    Raises:
        ValueError: bad `top_k`, or a file that cannot be read (without
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
    >>> batches = transfer.workflow.iter_predictions(
    ...     model, ["photos"], batch_size=2, skip_bad_files=True)
    >>> for batch in batches:
    ...     print([r["file"] for r in batch.results],
    ...           [file for file, _ in batch.skipped])
    ['photos/0.png', 'photos/1.png'] []
    ['photos/2.png'] ['photos/3.png']
    """
    class_names = run_class_names(model)
    _check_top_k(top_k, class_names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
        batch_size < 1
    ):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    modality = run_modality(model)
    files = expand_files(paths, modality)
    image_size = None if modality == "text" else int(model.input_shape[1])
    kind = "UTF-8 text" if modality == "text" else "image"
    for batch, reads in streams.read_batches(files, modality, image_size,
                                      batch_size):
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
                probs = probabilities(
                    model, np.asarray(inputs, dtype=object), batch_size)
            else:
                probs = _softmax_if_logits(model, np.asarray(
                    _backend.predict_on_batch(model, np.stack(inputs)),
                    dtype="float64",
                ))
            for path, row in zip(good, probs, strict=True):
                order = np.argsort(-row, kind="stable")[:top_k]
                results.append({
                    "file": path,
                    "predictions": [
                        {"class": class_names[i], "probability": float(row[i])}
                        for i in order
                    ],
                })
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
                  skip_bad_files=False):
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

    Returns:
        A list with one dict per file: `file` and `predictions`, a list of
        `{"class": name, "probability": p}`.

    Raises:
        ValueError: bad `top_k`, or a file that cannot be read (the error
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
    >>> results = transfer.workflow.predict_files(model, ["photos"], top_k=2)
    >>> [result["file"] for result in results]
    ['photos/0.png', 'photos/1.png', 'photos/2.png']
    >>> sorted(p["class"] for p in results[0]["predictions"])
    ['0', '1']
    >>> round(sum(p["probability"] for p in results[0]["predictions"]), 6)
    1.0
    """
    results, skipped = [], []
    for batch in iter_predictions(model, paths, top_k=top_k,
                                  batch_size=batch_size,
                                  skip_bad_files=skip_bad_files):
        results.extend(batch.results)
        skipped.extend(batch.skipped)
    if skipped:
        logger.warning(
            "Skipped %d file(s) that cannot be read: %s", len(skipped),
            "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
            + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""),
        )
    return results


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


def _image_evaluation_data(source, model, config, batch_size, verbose):
    folder, split = source.folder, source.split
    if source.files is not None:
        split = 0  # the listed files are the validation split
    # The validation split is never shuffled; every file is read
    # unshuffled too, so that the batches follow `file_paths`.
    train, val, names = load_image_folder(
        folder, image_size=int(model.input_shape[1]),
        batch_size=batch_size, validation_split=split or 0,
        seed=source.seed or 0, verbose=0,
        skip_bad_files=bool(config and config.get("skip_bad_files")),
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
                     batch_size=32, verbose=0, run_dir=None):
    """Labelled evaluation data for a run's model, streamed from disk.

    For image runs, a `LabelledDataset`: a `tf.data` pipeline over the
    folder (parallel decode, prefetch) in a fixed order (the validation
    split's, or every file's sorted order), with each example's file in
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
    >>> data = transfer.workflow.labelled_dataset("test", model, batch_size=4)
    >>> [tuple(images.shape) for images, _ in data]
    [(4, 32, 32, 3), (2, 32, 32, 3)]
    >>> data.file_paths[:2]
    ['0/0.png', '0/2.png']
    """
    class_names = run_class_names(model)
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
        data, names = _image_evaluation_data(source, model, config,
                                             batch_size, verbose)
    if list(names) != class_names:
        raise ValueError(
            f"The classes of '{source.folder}' {list(names)} differ from the "
            f"model's {class_names}. Evaluate on a folder with the same class "
            f"subfolders. Received: data={data_dir!r}"
        )
    return data


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
    >>> data = transfer.workflow.load_labelled_data("test", model)
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
