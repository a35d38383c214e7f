"""Small backbones for training from scratch on small images.

Neither has pretrained weights: they are the backbones to pretrain yourself
with `transfer.pretrain_images` (self-supervised, on unlabelled images) and
then fine-tune, at 28 to 64 pixels on a CPU.

- `small_cnn`: four blocks of 3x3 convolutions with BatchNorm and ReLU (16,
  32, 64, 128 filters; strides 1, 2, 2, 2). SimCLR pretrains it.
- `small_vit`: KerasHub's `ViTBackbone` in a small configuration (patch 4,
  4 encoder layers, width 64, 4 heads, MLP 256, class token; about 0.2M
  parameters), re-wired flat like the `vit` family. Random init only; masked
  image modelling (`method="mae"`) or SimCLR pretrains it.
"""

import dataclasses

import keras

from transfer.backbones import hub
from transfer.backbones import vision_transformers
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import download

# `small_vit`'s KerasHub `ViTBackbone` arguments (besides the image shape).
SMALL_VIT = {"patch_size": 4, "num_layers": 4, "num_heads": 4,
             "hidden_dim": 64, "mlp_dim": 256}


def _no_imagenet(name, weights):
    if weights == "imagenet":
        raise ValueError(
            f"Backbone '{name}' has no ImageNet weights: it is meant to be "
            "pretrained with transfer.pretrain_images. Pass weights=None "
            "(random init), a .weights.h5 path, or the pretrained .keras file "
            "as the backbone. Received: weights='imagenet'"
        )

_WIDTHS = (("stem", 16, 1), ("block1", 32, 2), ("block2", 64, 2),
           ("block3", 128, 2))


def _small_cnn(weights, input_shape):
    _no_imagenet("small_cnn", weights)
    inputs = keras.Input(input_shape)
    x = inputs
    for name, filters, strides in _WIDTHS:
        for index, stride in enumerate((strides, 1)):
            x = keras.layers.Conv2D(
                filters, 3, strides=stride, padding="same", use_bias=False,
                name=f"{name}_conv{index + 1}",
            )(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn{index + 1}")(x)
            x = keras.layers.ReLU(name=f"{name}_relu{index + 1}")(x)
    model = keras.Model(inputs, x, name="small_cnn")
    if weights is None:
        return model, {"weights": None, "source": "random init"}
    model.load_weights(weights)
    return model, download.describe_file(weights, weights, "file")


register_backbone(
    BackboneSpec(
        name="small_cnn",
        source="transfer",
        builder=_small_cnn,
        image_size=32,
        min_image_size=16,
        scale=1.0 / 127.5,
        offset=-1.0,
        blocks=tuple(f"^{name}_" for name, _, _ in _WIDTHS),
        weights=(),
        description="small plain CNN (no pretrained weights) to pretrain "
                    "from scratch",
    )
)


def _small_vit(weights, input_shape, pooling=None):
    del pooling  # every pooling works on the token sequence
    _no_imagenet("small_vit", weights)
    keras_hub = hub.import_keras_hub()
    vision = keras_hub.models.ViTBackbone(
        image_shape=tuple(input_shape), **SMALL_VIT,
        dtype=keras.config.dtype_policy().name,
    )
    model = vision_transformers.flatten("vit", vision, tuple(input_shape))
    info = {"weights": None, "source": "random init"}
    if weights is not None:
        model.load_weights(weights)
        info = download.describe_file(weights, weights, "file")
    info["prefix_tokens"] = 1  # the class token
    return model, info


register_backbone(
    dataclasses.replace(
        vision_transformers.family_spec("vit"),
        name="small_vit",
        source="transfer",
        builder=_small_vit,
        image_size=32,
        min_image_size=8,
        patch_size=SMALL_VIT["patch_size"],
        blocks=vision_transformers.family_blocks(
            "vit", SMALL_VIT["num_layers"]),
        weights=(),
        description="small ViT (KerasHub ViTBackbone, patch 4, 4 layers, "
                    "width 64; no pretrained weights) to pretrain from "
                    "scratch",
    )
)
