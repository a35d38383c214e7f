"""Whole runs from a folder: train one, reload it, read what it knows.

`train_run` is what `transfer train` calls, `load_run` what `evaluate`,
`predict`, `export` and `report` start from; they are plain library
functions, usable from Python too. Every model they return is a plain
`keras.Model`. Predicting on files is `transfer.prediction`, reading
labelled evaluation data `transfer.evaluation_data`.
"""

import dataclasses
import logging
import os

from transfer import run_config
from transfer._io import read_json_checked
from transfer.backbones.resolve import get_backbone_spec
from transfer.data import image_files
from transfer.data.image_files import IMAGE_EXTENSIONS
from transfer.data.images import default_augmentation
from transfer.data.images import describe_augmentation
from transfer.data.images import load_image_folder
from transfer.data.layout import SPLIT_FILES
from transfer.data.layout import detect_layout
from transfer.data.layout import format_file_list
from transfer.data.layout import read_split_file
from transfer.data.text import load_text_csv
from transfer.data.text import load_text_folder
from transfer.data.text import split_texts
from transfer.models.classifier import build_classifier
from transfer.models.classifier import check_build_options
from transfer.models.text import build_text_classifier
from transfer.saving import load_model
from transfer.training import run_dir as run_dir_lib
from transfer.training.engines import distribution_scope
from transfer.training.fit import fit_recipe
from transfer.training.lock import check_free
from transfer.training.recipe import Recipe

logger = logging.getLogger(__name__)
TEXT_EXTENSIONS = (".txt",)
TABLE_EXTENSIONS = (".csv",)


def is_table(path):
    """Whether `path` names a CSV file (text runs read rows from it)."""
    return str(path).lower().endswith(TABLE_EXTENSIONS)


def text_columns(config, model=None):
    """`(text_column, text_pair_column)` of a run's CSV data.

    From the run's config; runs made before sentence pairs have none and
    read the `"text"` column.
    """
    config = config or {}
    return (config.get("text_column") or "text",
            config.get("text_pair_column"))


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
    for path in image_files.visible_files(directory):
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
    `config["split_file"]`, a JSON split (`transfer doctor --fix-split`
    writes one that keeps near-duplicates in one part;
    `transfer.data.layout.read_split_file`), gives the training and
    validation files instead.

    Images are resized with `config["interpolation"]`, or else the
    backbone's own (`BackboneSpec.interpolation`); the value is written to
    `config.json` and, through the model, the manifest, and `evaluate`,
    `report` and `predict` resize with it.

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
    table = is_table(config["data"])
    _check_text_source(config, table)
    layout = None if table else detect_layout(config["data"])
    modality = config["modality"]
    if modality == "auto":
        modality = "text" if table else detect_modality(layout.train)
    spec = get_backbone_spec(config["backbone"], modality=modality)
    pooling = _check_model_options(spec, config, modality)
    if modality == "image" and config.get("interpolation"):
        # The model records it: evaluate and predict resize the same way.
        spec = dataclasses.replace(spec, interpolation=config["interpolation"])
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
    if layout is not None and layout.val is not None and config[
        "validation_split"
    ]:
        logger.info(
            "'%s' has its own validation folder '%s': validation_split=%s "
            "is ignored.", layout.root, layout.val, config["validation_split"])
    resolved["split"] = (
        "folders" if layout is not None and layout.val is not None
        else "stratified"
    )
    if config.get("split_file"):
        if modality != "image":
            raise ValueError(
                "A split file lists image files; text runs split their "
                "data themselves. Leave out --split-file. "
                f"Received: split_file={config['split_file']!r}"
            )
        # Checked now, before any image is read.
        read_split_file(config["split_file"], layout)
        resolved["split_file"] = os.path.abspath(config["split_file"])
        resolved["split"] = "file"
    run_files = {}
    if modality == "image":
        image_size = config["image_size"] or spec.image_size
        resolved["image_size"] = image_size
        # The defaults resolved: evaluate, report and a resume read them.
        resolved["pooling"] = pooling
        resolved["interpolation"] = spec.interpolation
        train, val, class_names = _image_parts(
            layout, config, (image_size, spec.interpolation), verbose)
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
                pooling=pooling, lora_rank=config.get("lora_rank"),
                drop_path=config.get("drop_path") or 0.0,
            )
    else:
        if table:
            train, val, class_names = _text_table_parts(config)
        else:
            train, val, class_names = _text_parts(layout, config)
        with distribution_scope(config["distribute"]):
            model = build_text_classifier(
                config["backbone"], len(class_names),
                weights=config["weights"],
                sequence_length=config["sequence_length"],
                dropout=config["dropout"],
                text_pairs=bool(config.get("text_pair_column")),
                lora_rank=config.get("lora_rank"),
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


def _check_model_options(spec, config, modality):
    """The image model's pooling; raises for build options the backbone
    does not offer, before any data is read."""
    if modality == "image":
        return check_build_options(
            spec, config.get("pooling"), config.get("drop_path") or 0.0,
            config.get("lora_rank"))
    for key in ("pooling", "drop_path", "interpolation"):
        if config.get(key):
            raise ValueError(
                f"`{key}` is an option of image models; text classifiers "
                "pool their encoder's own way and take only `lora_rank`. "
                f"Leave it out for a text run. Received: {key}="
                f"{config[key]!r}"
            )
    return None


def _image_parts(layout, config, sizing, verbose):
    """`(train, val, class_names)` of a layout's image folders, resized to
    `sizing`, `(image_size, interpolation)`."""
    image_size, interpolation = sizing
    common = dict(image_size=image_size, interpolation=interpolation,
                  batch_size=config["batch_size"],
                  seed=config["seed"],
                  skip_bad_files=config["skip_bad_files"], verbose=verbose)
    if config.get("split_file"):
        # The listed files, as given: a split that keeps duplicates apart.
        train_files, val_files = read_split_file(config["split_file"],
                                                 layout)
        train, _, class_names = load_image_folder(
            layout.train, validation_split=0, files=train_files, **common)
        val, _, _ = load_image_folder(
            layout.val or layout.train, validation_split=0, shuffle=False,
            files=val_files, **common)
        return train, val, class_names
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


def _check_text_source(config, table):
    """CSV data is text; sentence pairs need CSV data: checked first."""
    modality = config["modality"]
    if table and modality == "image":
        raise ValueError(
            f"'{config['data']}' is a CSV file: `transfer train` reads CSV "
            "files as text (a text column and a label column), and images "
            "from class folders. Pass modality='text' (--modality text) or "
            f"a folder of images. Received: modality={modality!r}"
        )
    if table and not os.path.isfile(config["data"]):
        raise FileNotFoundError(
            f"CSV file '{config['data']}' does not exist. "
            f"Received: data={config['data']!r}"
        )
    if config.get("text_pair_column") and not table:
        raise ValueError(
            "Sentence pairs are read from a CSV file with two text columns; "
            f"'{config['data']}' is a folder. Pass --data FILE.csv with "
            "--text-column and --text-pair-column, or leave out "
            "--text-pair-column. "
            f"Received: text_pair_column={config['text_pair_column']!r}"
        )


def _text_table_parts(config):
    """`(train, val, class_names)` of a CSV file of texts (or pairs):
    a stratified, seeded split holding out `validation_split`."""
    first, second = text_columns(config)
    texts, labels, class_names = load_text_csv(
        config["data"], text_column=first, text_pair_column=second,
        label_column=config.get("label_column") or "label")
    if not config["validation_split"]:
        return (texts, labels), None, class_names
    train, val = split_texts(texts, labels, config["validation_split"],
                             config["seed"])
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
    if config.get("interpolation"):  # how its images were resized
        metadata["interpolation"] = config["interpolation"]
    model.transfer_metadata = metadata
    return model, config


def run_modality(model):
    """`"text"` for text classifiers, else `"image"`."""
    metadata = getattr(model, "transfer_metadata", None) or {}
    return metadata.get("modality") or "image"


def run_takes_pairs(model):
    """Whether a text run's model classifies sentence pairs."""
    metadata = getattr(model, "transfer_metadata", None) or {}
    return bool(metadata.get("text_pairs"))


def run_class_names(model):
    """The class names a run's model was trained with, or `"0"`, `"1"`..."""
    metadata = getattr(model, "transfer_metadata", None) or {}
    names = metadata.get("class_names")
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(model.output_shape[-1]))]
