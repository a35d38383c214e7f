"""KerasHub image backbones: `hub:<preset>` and local preset directories.

`keras_hub` is imported lazily, inside the builders.
"""

import json
import os
import re

import keras

from transfer.backbones.spec import BackboneSpec
from transfer.weights import download


def import_keras_hub():
    """`keras_hub`, or an ImportError that gives the pip command."""
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "KerasHub backbones need `keras-hub`. Install it with "
            "`pip install keras-hub`."
        ) from e
    return keras_hub


def as_functional(backbone):
    """Re-wraps a KerasHub backbone as a plain functional `keras.Model`.

    A KerasHub `Backbone` serializes its constructor arguments, so the
    per-layer `trainable` flags of a partly frozen backbone are lost on
    reload (and the optimizer state no longer matches). The plain functional
    graph over the same layers and weights saves every layer's config.
    """
    return keras.Model(backbone.input, backbone.output)


def preset_name(preset):
    """A registry-style name for a preset id or directory: `hub_<name>`."""
    base = os.path.basename(os.path.normpath(preset)) if os.sep in preset else preset
    return "hub_" + re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")


def hub_spec(preset, image_size=224):
    """A `BackboneSpec` for a KerasHub image preset name or directory.

    Blocks are inferred from the backbone's layer names when it is built.
    """
    name = preset_name(preset)

    def builder(weights, input_shape):
        keras_hub = import_keras_hub()
        hint = (
            "Download it once where Kaggle or Hugging Face is reachable "
            f"(transfer.fetch_weights('hub:{preset}')), or pass a local "
            "preset directory."
        )
        with download.network_guard(name, [], hint):
            model = keras_hub.models.Backbone.from_preset(
                preset, load_weights=weights is not None,
                # A preset's config pins its dtype: follow the policy in
                # force (`build_classifier(precision=...)`).
                dtype=keras.config.dtype_policy().name,
            )
        info = {"weights": weights, "source": f"keras_hub:{preset}"}
        return as_functional(model), info

    return BackboneSpec(
        name=name,
        source="keras_hub",
        builder=builder,
        image_size=image_size,
        blocks=(),
        weights=("imagenet", "preset"),
        description=f"KerasHub preset {preset}",
    )


def read_preset_config(directory):
    """A preset folder's `config.json` as a dict; `None` when it has none.

    Raises:
        ValueError: the file is there but cannot be read as JSON.
    """
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"Preset folder '{directory}' has an unreadable config.json "
            f"({e}). Save the preset again with `save_to_preset`. "
            f"Received: backbone={directory!r}"
        ) from None
    return config if isinstance(config, dict) else None
