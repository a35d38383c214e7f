"""`BackboneSpec`: everything `transfer` needs to know about one backbone."""

import dataclasses
from typing import Callable
from typing import Optional
from typing import Tuple
from typing import Union

Number = Union[float, Tuple[float, float, float]]

# The methods `tf.image.resize` (and so
# `keras.utils.image_dataset_from_directory`) resizes images with.
INTERPOLATIONS = (
    "bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
    "gaussian", "mitchellcubic",
)


def check_interpolation(interpolation):
    """Returns `interpolation`; raises unless it is one of `INTERPOLATIONS`.

    Example:

    >>> check_interpolation("bicubic")
    'bicubic'
    >>> check_interpolation("cubicx")
    Traceback (most recent call last):
        ...
    ValueError: Unknown interpolation 'cubicx': ...
    """
    if not isinstance(interpolation, str) or (
        interpolation not in INTERPOLATIONS
    ):
        raise ValueError(
            f"Unknown interpolation {interpolation!r}: images are resized "
            f"with one of {INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    return interpolation


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone, preprocess its input and split it in blocks.

    Args:
        name: registry key, lowercase snake case (`"efficientnet_b0"`). Also
            the name of the nested backbone layer in a classifier.
        source: where the architecture and weights come from, for example
            `"keras.applications"`, `"keras_hub"` or `"file"`.
        builder: `builder(weights, input_shape)` returns a `keras.Model` that
            maps images to a feature map, and a dict describing the weights
            (`weights`, `source`, `sha256` where known).
        image_size: default square input size in pixels.
        min_image_size: the smallest input size the architecture accepts.
            Defaults to `32`.
        scale: multiplier applied to `[0, 255]` RGB pixels, a float or one
            value per channel. Defaults to `1.0`.
        offset: added after `scale`. Defaults to `0.0`.
        blocks: ordered layer-name regexes, stem first. A layer belongs to
            the first block whose regex matches its name; a layer matching
            none belongs to the block of the layer before it.
        weights: the weight names this backbone accepts besides `None`.
            Defaults to `("imagenet",)`.
        weights_files: file names the pretrained weights are cached under,
            named in errors when they are missing. Defaults to `()`.
        description: one line for `list_backbones()` tables.
        fetch: optional `fetch()` that downloads or prepares the weights.
        modality: `"image"` or `"text"`. Text specs' builders take
            `(weights, sequence_length)` and return a KerasHub `Backbone`.
            Defaults to `"image"`.
        pooling: the `build_classifier(pooling=...)` values the backbone
            offers, its default first: `("avg", "max")` for feature maps;
            vision transformers offer `"token"` (class token), `"avg"`
            (mean of the patch tokens) and their own head (`"map"`).
            Defaults to `("avg", "max")`.
        patch_size: image sizes must be a multiple of it (vision
            transformers); `None` for any size. Defaults to `None`.
        options: keyword options the builder takes besides `weights` and
            `input_shape`: `"pooling"` (the builder needs it, e.g. to keep
            SigLIP's attention-pooling head) and `"drop_path"` (stochastic
            depth rate). Defaults to `()`.
        lora_layers: names of the attention projection layers
            `build_classifier(lora_rank=...)` adds LoRA adapters to; `()`
            for backbones without attention. Defaults to `()`.
        interpolation: how images are resized to the model's input size,
            as the backbone was pretrained (a preset's image converter
            gives it): one of `INTERPOLATIONS`. The data loaders of
            `transfer train` resize with it, the model records it, and
            `evaluate`, `report` and `predict` resize with the recorded
            value. Defaults to `"bilinear"`.

    Example:

    >>> def tiny_builder(weights, input_shape):
    ...     inputs = keras.Input(input_shape)
    ...     x = keras.layers.Conv2D(8, 3, strides=2, name="stem_conv")(inputs)
    ...     x = keras.layers.Conv2D(16, 3, strides=2, name="top_conv")(x)
    ...     info = {"weights": None, "source": "random init"}
    ...     return keras.Model(inputs, x), info
    >>> spec = transfer.BackboneSpec(
    ...     name="tiny_builder_cnn", source="mine", builder=tiny_builder,
    ...     image_size=32, scale=1 / 255, blocks=("^stem_", "^top_"),
    ...     weights=())
    >>> model = transfer.build_classifier(spec, 3, weights=None)
    >>> model.output_shape
    (None, 3)
    >>> model.get_layer("tiny_builder_cnn").output_shape
    (None, 7, 7, 16)
    """

    name: str
    source: str
    builder: Callable
    image_size: int
    min_image_size: int = 32
    scale: Number = 1.0
    offset: Number = 0.0
    blocks: Tuple[str, ...] = ()
    weights: Tuple[str, ...] = ("imagenet",)
    weights_files: Tuple[str, ...] = ()
    description: str = ""
    fetch: Optional[Callable] = None
    modality: str = "image"
    pooling: Tuple[str, ...] = ("avg", "max")
    patch_size: Optional[int] = None
    options: Tuple[str, ...] = ()
    lora_layers: Tuple[str, ...] = ()
    interpolation: str = "bilinear"

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name != self.name.lower():
            raise ValueError(
                "Backbone names are lowercase and contain no '/'. "
                f"Received: name={self.name!r}"
            )
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "weights_files", tuple(self.weights_files))
        for field in ("pooling", "options", "lora_layers"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        check_interpolation(self.interpolation)

    @property
    def has_preprocessing(self):
        """Whether a `Rescaling` layer is needed in front of the backbone."""
        return self.scale != 1.0 or self.offset != 0.0
