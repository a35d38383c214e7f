"""`keras.applications` backbones, one `register_backbone` call each.

Each spec names the preprocessing the ImageNet weights expect (inside the
model, so exported models stay self-contained) and the blocks in order, stem
first, as regexes over the real `keras.applications` layer names.
"""

import keras

from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import download

_TF_MODE = {"scale": 1.0 / 127.5, "offset": -1.0}  # pixels to [-1, 1]
_TORCH_MODE = {  # pixels to ImageNet mean/std normalised
    "scale": tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225)),
    "offset": tuple(
        -m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)
    ),
}


def _applications_builder(name, constructor, file_names, **extra):
    def builder(weights, input_shape):
        cls = getattr(keras.applications, constructor)
        kwargs = dict(include_top=False, input_shape=input_shape, **extra)
        if weights != "imagenet":
            model = cls(weights=None, **kwargs)
            if weights is not None:
                model.load_weights(weights)
                return model, download.describe_file(weights, weights, "file")
            return model, {"weights": None, "source": "random init"}
        hint = (
            f"On a machine with internet run transfer.fetch_weights('{name}') "
            "and copy the file into the Keras cache directory."
        )
        with download.network_guard(name, file_names, hint):
            model = cls(weights="imagenet", **kwargs)
        path = download.cached_keras_file(file_names)
        if path is None:
            return model, {"weights": "imagenet", "source": constructor}
        return model, download.describe_file(
            path, "imagenet", f"keras.applications.{constructor}"
        )

    return builder


def _numbered(prefix, indices, suffix="_"):
    return tuple(f"^{prefix}{i}{suffix}" for i in indices)


_SPECS = [
    dict(
        name="mobilenet_v2",
        constructor="MobileNetV2",
        file_names=tuple(
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_"
            f"{rows}_no_top.h5"
            for rows in (96, 128, 160, 192, 224)
        ),
        image_size=224,
        blocks=("^(Conv1|bn_Conv1)", "^expanded_conv_")
        + _numbered("block_", range(1, 17))
        + ("^(Conv_1|out_relu)",),
        **_TF_MODE,
    ),
    dict(
        name="mobilenet_v3_small",
        constructor="MobileNetV3Small",
        file_names=("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",),
        image_size=224,
        blocks=("^conv($|_bn)", "^expanded_conv_(?!\\d)")
        + _numbered("expanded_conv_", range(1, 11))
        + ("^conv_1",),
    ),
    dict(
        name="mobilenet_v3_large",
        constructor="MobileNetV3Large",
        file_names=("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",),
        image_size=224,
        blocks=("^conv($|_bn)", "^expanded_conv_(?!\\d)")
        + _numbered("expanded_conv_", range(1, 15))
        + ("^conv_1",),
    ),
    dict(
        name="efficientnet_b0",
        constructor="EfficientNetB0",
        file_names=("efficientnetb0_notop.h5",),
        image_size=224,
        blocks=("^stem_",) + _numbered("block", range(1, 8), "[a-z]_")
        + ("^top_",),
    ),
    dict(
        name="efficientnet_v2_b0",
        constructor="EfficientNetV2B0",
        file_names=("efficientnetv2-b0_notop.h5",),
        image_size=224,
        blocks=("^stem_",) + _numbered("block", range(1, 7), "[a-z]_")
        + ("^top_",),
    ),
    dict(
        name="resnet50_v2",
        constructor="ResNet50V2",
        file_names=("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        image_size=224,
        blocks=("^(conv1_|pool1_)",) + _numbered("conv", range(2, 6), "_block")
        + ("^post_",),
        **_TF_MODE,
    ),
    dict(
        name="convnext_tiny",
        constructor="ConvNeXtTiny",
        file_names=("convnext_tiny_notop.h5",),
        image_size=224,
        blocks=("_stem$",)
        + tuple(
            f"(_stage_{i}_block_|_downsampling_block_{i - 1}$)"
            for i in range(4)
        ),
    ),
    dict(
        name="xception",
        constructor="Xception",
        file_names=("xception_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        image_size=299,
        min_image_size=71,
        blocks=_numbered("block", range(1, 15)),
        **_TF_MODE,
    ),
    dict(
        name="densenet121",
        constructor="DenseNet121",
        file_names=("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",),
        image_size=224,
        blocks=("^(conv1_|pool1$)",)
        + tuple(f"^(conv{i}_|pool{i}_)" for i in range(2, 6))
        + ("^(bn|relu)$",),
        **_TORCH_MODE,
    ),
]


def _fetcher(builder, image_size):
    def fetch():
        builder("imagenet", (image_size, image_size, 3))

    return fetch


for _kwargs in _SPECS:
    _kwargs = dict(_kwargs)
    _constructor = _kwargs.pop("constructor")
    _file_names = _kwargs.pop("file_names")
    _builder = _applications_builder(_kwargs["name"], _constructor, _file_names)
    register_backbone(
        BackboneSpec(
            source="keras.applications",
            builder=_builder,
            weights_files=_file_names,
            description=f"keras.applications.{_constructor}",
            fetch=_fetcher(_builder, _kwargs.get("image_size", 224)),
            **_kwargs,
        )
    )
