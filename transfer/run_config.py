"""Training configs for whole runs: a recipe plus the options around it.

A config file (YAML or JSON) is a mapping with a `stages` list (the
`Recipe`, as `transfer.load_recipe` reads it) and top-level training
options: the backbone, image size, batch size, split, seed, augmentation,
the directory that keeps head-stage features across runs.
`resolve_config` merges defaults, the file and explicit overrides (the
command line's flags), in that order, and checks every key and value before
any data is read. The resolved config is saved as `config.json` in the run
directory, so `evaluate`, `report` and `export` know how the run was made.
"""

import json
import os

from transfer.backbones.spec import check_interpolation
from transfer.models.classifier import PRECISIONS
from transfer.training import run_dir as run_dir_lib
from transfer.training.distribute import check_distribute
from transfer.training.recipe import Recipe
from transfer.training.recipe import two_stage_recipe
from transfer.training.recipe_files import read_mapping

CONFIG_FILE = run_dir_lib.CONFIG
MODALITIES = ("auto", "image", "text")

# Top-level options and their defaults. `stages` defaults to
# `two_stage_recipe()`; `image_size` and `interpolation` to the backbone's.
DEFAULTS = {
    "data": None,
    "backbone": None,
    "modality": "auto",
    "weights": "pretrained",
    "image_size": None,
    "interpolation": None,
    "sequence_length": 128,
    "text_column": "text",
    "text_pair_column": None,
    "label_column": "label",
    "batch_size": 32,
    "validation_split": 0.2,
    # A JSON split (`transfer doctor --fix-split`): its train/val files.
    "split_file": None,
    "seed": 1337,
    "augment": True,
    "dropout": 0.2,
    "pooling": None,
    "lora_rank": None,
    "drop_path": 0.0,
    "skip_bad_files": False,
    "distribute": "none",
    "feature_cache_dir": None,
    "precision": "float32",
    "jit_compile": "auto",
    "stages": None,
}


def allowed_keys():
    """The keys a config file may hold, sorted."""
    return sorted(DEFAULTS)


def read_config_file(path):
    """Reads a YAML or JSON config file into a dict.

    Raises:
        ValueError: the file is missing, has another suffix, cannot be
            parsed or does not hold a mapping; the message names the file.
    """
    try:
        return read_mapping(path, "Config")
    except ValueError as e:
        if "must hold a mapping" not in str(e):
            raise
        raise ValueError(
            f"{e} of options ({', '.join(allowed_keys())})"
        ) from None


def _check_number(config, key, kind, low, high=None):
    value = config[key]
    if value is None and key == "image_size":
        return
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        ok = value >= low and (high is None or value < high)
    if not ok:
        bound = f">= {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(
            f"Option `{key}` must be {'an integer' if kind is int else 'a number'}"
            f" {bound}. Received: {key}={value!r}"
        )


def _check_build_options(config):
    """Types of the image model's build options; whether the backbone offers
    them is checked by `transfer.workflow.train_run`, before any data."""
    pooling = config["pooling"]
    if pooling is not None and not (isinstance(pooling, str) and pooling):
        raise ValueError(
            "Option `pooling` must be a pooling name (token, avg, max, map: "
            "see `transfer backbones`) or null for the backbone's default. "
            f"Received: pooling={pooling!r}"
        )
    if config["lora_rank"] is not None:
        _check_number(config, "lora_rank", int, 1)
    _check_number(config, "drop_path", (int, float), 0, 1)
    if config["interpolation"] is not None:
        check_interpolation(config["interpolation"])


def resolve_config(path=None, overrides=None, *, epochs=None,
                   learning_rates=None):
    """Defaults, then the config file, then `overrides`, checked.

    Args:
        path: a YAML or JSON config file, or `None`. Defaults to `None`.
        overrides: a dict of options that win over the file (the flags of
            `transfer train`); `None` values are ignored. Defaults to `None`.
        epochs: per-stage epochs replacing the stages' (see
            `override_stages`). Defaults to `None`.
        learning_rates: per-stage learning rates, likewise. Defaults to
            `None`.

    Returns:
        The resolved config: a dict with every key of `DEFAULTS`, `stages`
        as `Recipe.get_config()["stages"]`.

    Raises:
        ValueError: an unknown key (the allowed keys are named), a bad value,
            or a missing `backbone` or `data`.

    Example:

    >>> lines = [
    ...     "backbone: efficientnet_lite0",
    ...     "batch_size: 16",
    ...     "stages:",
    ...     "  - {name: head, epochs: 2, learning_rate: 1.0e-3}",
    ... ]
    >>> with open("run.yaml", "w") as f:
    ...     _ = f.write("\\n".join(lines))
    >>> config = transfer.run_config.resolve_config(
    ...     "run.yaml", {"data": "pets", "batch_size": 8, "seed": None})
    >>> config["backbone"], config["batch_size"], config["seed"]
    ('efficientnet_lite0', 8, 1337)
    >>> [(stage["name"], stage["epochs"]) for stage in config["stages"]]
    [('head', 2)]
    >>> transfer.run_config.resolve_config(
    ...     None, {"data": "pets", "backbone": "small_cnn"}, epochs=[1])
    Traceback (most recent call last):
        ...
    ValueError: Got 1 value(s) for `epochs` but the recipe has 2 stage(s)
    ['head', 'finetune']: ...
    """
    source = read_config_file(path) if path else {}
    where = f"config file {path}" if path else "config"
    unknown = sorted(set(source) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} in {where}. Allowed: "
            f"{allowed_keys()}."
        )
    config = dict(DEFAULTS)
    config.update(source)
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise ValueError(
                f"Unknown option {key!r}. Allowed: {allowed_keys()}."
            )
        if value is not None:
            config[key] = value
    for key in ("data", "backbone"):
        if not config[key] or not isinstance(config[key], str):
            raise ValueError(
                f"No `{key}` given: pass --{key} or set `{key}:` in the "
                f"config file. Received: {key}={config[key]!r}"
            )
    if config["modality"] not in MODALITIES:
        raise ValueError(
            f"Option `modality` must be one of {MODALITIES}. "
            f"Received: modality={config['modality']!r}"
        )
    if config["weights"] in ("none", "None", "null", "random"):
        config["weights"] = None
    for key in ("text_column", "text_pair_column", "label_column"):
        value = config[key]
        if not (isinstance(value, str) and value) and not (
            key == "text_pair_column" and value is None
        ):
            raise ValueError(
                f"Option `{key}` must be a CSV column name. "
                f"Received: {key}={value!r}"
            )
    _check_number(config, "image_size", int, 16)
    _check_number(config, "sequence_length", int, 8)
    _check_number(config, "batch_size", int, 1)
    _check_number(config, "validation_split", (int, float), 0, 1)
    _check_number(config, "seed", int, 0)
    _check_number(config, "dropout", (int, float), 0, 1)
    _check_build_options(config)
    for key in ("augment", "skip_bad_files"):
        if not isinstance(config[key], bool):
            raise ValueError(
                f"Option `{key}` must be true or false. "
                f"Received: {key}={config[key]!r}"
            )
    split_file = config["split_file"]
    if split_file is not None and (not isinstance(split_file, str)
                                   or not split_file):
        raise ValueError(
            "Option `split_file` must be the path of a JSON split file "
            "(`transfer doctor --fix-split` writes doctor/split.json) or "
            f"null. Received: split_file={split_file!r}"
        )
    cache_dir = config["feature_cache_dir"]
    if cache_dir is not None and (not isinstance(cache_dir, str)
                                  or not cache_dir):
        raise ValueError(
            "Option `feature_cache_dir` must be a directory path (features of "
            "head-only stages are kept there across runs) or null. "
            f"Received: feature_cache_dir={cache_dir!r}"
        )

    config["distribute"] = check_distribute(config["distribute"])
    if config["precision"] not in PRECISIONS:
        raise ValueError(
            f"Option `precision` must be one of {PRECISIONS}. "
            f"Received: precision={config['precision']!r}"
        )
    if config["jit_compile"] not in ("auto", True, False):
        raise ValueError(
            "Option `jit_compile` must be auto, true or false. "
            f"Received: jit_compile={config['jit_compile']!r}"
        )
    stages = config["stages"]
    if stages is None:
        stages = two_stage_recipe().get_config()["stages"]
    if not isinstance(stages, list) or not all(
        isinstance(s, dict) for s in stages
    ):
        raise ValueError(
            f"`stages` in {where} must be a list of mappings, e.g. "
            "[{name: head, epochs: 3, learning_rate: 1.0e-3}]. "
            f"Received: stages={stages!r}"
        )
    stages = override_stages(stages, epochs, learning_rates)
    try:
        recipe = Recipe.from_config({"stages": stages})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    config["stages"] = recipe.get_config()["stages"]
    return config


def override_stages(stages, epochs=None, learning_rates=None):
    """`stages` with per-stage epochs and learning rates replaced.

    Args:
        stages: a list of stage mappings.
        epochs: one value per stage, or `None`.
        learning_rates: one value per stage, or `None`.

    Raises:
        ValueError: a list's length differs from the number of stages.
    """
    stages = [dict(s) for s in stages]
    for key, values in (("epochs", epochs), ("learning_rate", learning_rates)):
        if values is None:
            continue
        if len(values) != len(stages):
            names = [s["name"] for s in stages]
            raise ValueError(
                f"Got {len(values)} value(s) for `{key}` but the recipe has "
                f"{len(stages)} stage(s) {names}: give one per stage, "
                f"comma-separated. Received: {key}={values}"
            )
        for stage, value in zip(stages, values, strict=True):
            stage[key] = value
    return stages


def load_run_config(run_dir):
    """The resolved config a run was trained with, or `None`."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def dumps(config):
    """`config` as the JSON text written to `run_dir/config.json`."""
    return json.dumps(config, indent=2) + "\n"
