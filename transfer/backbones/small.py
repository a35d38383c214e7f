"""`small_cnn`: a small plain CNN for training from scratch on small images.

It has no pretrained weights: it is the backbone to pretrain yourself with
`transfer.pretrain_images` (self-supervised, on unlabelled images) and then
fine-tune, at 28 to 64 pixels on a CPU. Four blocks of 3x3 convolutions with
BatchNorm and ReLU (16, 32, 64, 128 filters; strides 1, 2, 2, 2).
"""

import keras

from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import download

_WIDTHS = (("stem", 16, 1), ("block1", 32, 2), ("block2", 64, 2),
           ("block3", 128, 2))


def _small_cnn(weights, input_shape):
    if weights == "imagenet":
        raise ValueError(
            "Backbone 'small_cnn' has no ImageNet weights: it is meant to be "
            "pretrained with transfer.pretrain_images. Pass weights=None "
            "(random init), a .weights.h5 path, or the pretrained .keras file "
            "as the backbone. Received: weights='imagenet'"
        )
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
