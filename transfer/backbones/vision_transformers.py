"""Vision transformers from KerasHub: ViT, DeiT, DINOv2/v3, SigLIP, CLIP.

Each family is one registered `BackboneSpec` built from a KerasHub preset.
`hub:<preset>` and local preset folders whose `config.json` names one of
these backbone classes resolve to the family's spec too (`preset_spec`).

ViT, DeiT and DINOv2 keep every encoder layer inside one `encoder` layer, so
the builder re-wires the KerasHub model into a flat functional
`keras.Model` over the same layer objects (same weights): the patch and
position embedding, each encoder layer and the final norm are then direct
layers, which is what blocks, `set_trainable_blocks`, `layer_decay` and the
saved per-layer `trainable` flags work on. The output is the token sequence
`(batch, tokens, hidden_dim)`, or SigLIP's attention-pooled embedding
`(batch, hidden_dim)` with `pooling="map"`.

`keras_hub` is imported lazily, inside the functions that need it.
"""

import dataclasses
import json
import os
import re
import tempfile
from typing import Tuple

import keras

from transfer.backbones import hub
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.weights import download

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)
# The attention projections LoRA adapts (`keras.layers.MultiHeadAttention`'s
# query, key and value `EinsumDense` layers; DINOv3 names its own Dense
# layers `q_proj`, `k_proj`, `v_proj`).
LORA_LAYERS = ("query", "key", "value")


@dataclasses.dataclass(frozen=True)
class Family:
    """How one KerasHub vision transformer family is built and split.

    `stem` names the direct layers of the embedding block (after the
    `images` input), `block` the encoder layers (`{}` is the index, from
    `first`), `final` the final norm; names may carry a prefix (`name_`).
    """

    name: str
    classes: Tuple[str, ...]
    preset: str
    num_layers: int
    image_size: int
    patch_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    interpolation: str
    stem: Tuple[str, ...]
    block: str
    first: int
    final: str
    pooling: Tuple[str, ...]
    drop_path: bool = False
    interpolates: bool = False
    lora_layers: Tuple[str, ...] = LORA_LAYERS
    description: str = ""
    # The default preset's architecture, to build it offline with
    # `weights=None`: `(KerasHub class, ((argument, value), ...))`.
    architecture: tuple = ()


FAMILIES = {
    f.name: f
    for f in (
        Family("vit", ("ViTBackbone",), "vit_base_patch16_224_imagenet", 12,
               224, 16, _HALF, _HALF, "bilinear",
               ("vit_patching_and_embedding", "dropout"),
               "transformer_block_{}", 1, "ln", ("token", "avg"),
               description="ViT (KerasHub), ImageNet-21k/1k presets",
               architecture=("ViTBackbone", (("patch_size", 16), ("num_layers", 12), ("num_heads", 12), ("hidden_dim", 768), ("mlp_dim", 3072)))),
        Family("deit", ("DeiTBackbone",),
               "deit_base_distilled_patch16_224_imagenet", 12, 224, 16,
               _IMAGENET_MEAN, _IMAGENET_STD, "bicubic",
               ("deit_patching_and_embedding",), "transformer_block_{}", 1,
               "ln", ("token", "avg"),
               description="DeiT distilled (KerasHub), ImageNet-1k presets",
               architecture=("DeiTBackbone", (("patch_size", 16), ("num_layers", 12), ("num_heads", 12), ("hidden_dim", 768), ("intermediate_dim", 3072)))),
        Family("dinov2", ("DINOV2Backbone",), "dinov2_small", 12, 224, 14,
               _IMAGENET_MEAN, _IMAGENET_STD, "bicubic", ("embeddings",),
               "layers_{}", 0, "layernorm", ("token", "avg"),
               drop_path=True, interpolates=True,
               description="DINOv2 self-supervised (KerasHub) presets",
               architecture=("DINOV2Backbone", (("patch_size", 14), ("num_layers", 12), ("num_heads", 6), ("hidden_dim", 384), ("intermediate_dim", 1536), ("position_embedding_shape", (518, 518, 3))))),
        # RoPE positions: any multiple of the patch size, weights kept. The
        # position layer (`rope_embedding`, no weights) joins the stem.
        Family("dinov3", ("DINOV3Backbone",), "dinov3_vit_small_lvd1689m",
               12, 224, 16, _IMAGENET_MEAN, _IMAGENET_STD, "bilinear",
               ("embeddings",), "layers_{}", 0, "layernorm",
               ("token", "avg"), drop_path=True, interpolates=True,
               lora_layers=("q_proj", "k_proj", "v_proj"),
               description="DINOv3 self-supervised (KerasHub) presets",
               architecture=("DINOV3Backbone", (("patch_size", 16), ("num_layers", 12), ("num_heads", 6), ("hidden_dim", 384), ("intermediate_dim", 1536), ("num_register_tokens", 4)))),
        Family("siglip", ("SigLIPBackbone", "SigLIPVisionEncoder"),
               "siglip_base_patch16_224", 12, 224, 16, _HALF, _HALF,
               "bicubic", ("embedding",), "encoder_block_{}", 0,
               "post_layer_norm", ("map", "avg"),
               description="SigLIP image encoder (KerasHub) presets",
               architecture=("SigLIPVisionEncoder", (("patch_size", 16), ("num_layers", 12), ("num_heads", 12), ("hidden_dim", 768), ("intermediate_dim", 3072)))),
        Family("clip", ("CLIPBackbone", "CLIPVisionEncoder"),
               "clip_vit_base_patch16", 12, 224, 16, _CLIP_MEAN, _CLIP_STD,
               "bicubic", ("embedding", "pre_layer_norm"),
               "encoder_block_{}", 0, "layer_norm", ("token", "avg"),
               description="CLIP image encoder (KerasHub) presets",
               architecture=("CLIPVisionEncoder", (("patch_size", 16), ("num_layers", 12), ("num_heads", 12), ("hidden_dim", 768), ("intermediate_dim", 3072), ("intermediate_activation", "quick_gelu")))),
    )
}


def layer_names(family, num_layers, pooling=None, prefix=""):
    """The direct layer names of a re-wired backbone, input first.

    Example:

    >>> layer_names(FAMILIES["dinov2"], 2)
    ['images', 'embeddings', 'layers_0', 'layers_1', 'layernorm']
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    pooling = pooling or family.pooling[0]
    names = ["images"]
    # Only the layers KerasHub builds at the top level carry the prefix.
    nested = family.name in ("vit", "deit", "dinov2", "dinov3")
    outer = "" if family.name in ("vit", "deit") else prefix
    names += [outer + n for n in family.stem]
    if family.name == "dinov3":
        names.append(outer + "rope_embedding")
    inner = "" if nested else prefix
    names += [
        inner + family.block.format(i + family.first)
        for i in range(num_layers)
    ]
    names.append(outer + family.final)
    if pooling == "map":
        names.append(prefix + "head")
    return names


def family_blocks(family, num_layers):
    """Block regexes: the embedding (stem), each encoder layer, the final
    norm (with SigLIP's attention-pooling head, when the model keeps it).

    Names may carry a KerasHub name prefix (`vision_encoder_...`), so the
    regexes match a name's end after `^` or `_`.

    Example:

    >>> family_blocks("dinov2", 2)
    ('(^|_)embeddings$', '(^|_)layers_0$', '(^|_)layers_1$',
     '(^|_)layernorm$')
    >>> family_blocks("siglip", 1)[-1]
    '(^|_)(post_layer_norm|head)$'
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    stem = family.stem[0] if len(family.stem) == 1 else (
        "(" + "|".join(family.stem) + ")"
    )
    blocks = [f"(^|_){stem}$"]
    blocks += [
        f"(^|_){family.block.format(i + family.first)}$"
        for i in range(num_layers)
    ]
    final = family.final
    if "map" in family.pooling:
        final = f"({final}|head)"
    blocks.append(f"(^|_){final}$")
    return tuple(blocks)


def infer_family_blocks(backbone):
    """Block regexes for a re-wired vision transformer, from its layer names,
    or `None` when `backbone` is not one (a reloaded `hub_*` backbone has no
    registered spec to ask)."""
    names = [layer.name for layer in backbone.layers]
    for family in FAMILIES.values():
        block = re.compile(
            "(^|_)" + family.block.replace("{}", r"\d+") + "$"
        )
        count = sum(1 for n in names if block.search(n))
        stem = re.compile(f"(^|_){family.stem[0]}$")
        final = re.compile(f"(^|_){family.final}$")
        if count and any(stem.search(n) for n in names) and any(
            final.search(n) and not n.endswith("pre_layer_norm")
            for n in names
        ):
            return family_blocks(family, count)
    return None


# Config keys some KerasHub layers write in `get_config` but refuse in their
# constructor, so a `.keras` file holding them directly would not reload.
_UNACCEPTED_KEYS = {
    "ViTPatchingAndEmbedding": ("num_patches", "num_positions"),
    "DeiTEmbeddings": ("num_patches", "num_positions"),
    "ViTEncoderBlock": ("key_dim",),
    "DeiTEncoderBlock": ("key_dim",),
}


@keras.saving.register_keras_serializable(package="transfer")
class HubLayer(keras.layers.Wrapper):
    """Calls a KerasHub layer, returns its first output, and saves it so
    that it reloads.

    ViT and DeiT layers write config keys their constructors refuse, and
    DeiT's encoder layers return `(tokens, None)`, which a functional graph
    does not take. The wrapper has the wrapped layer's name, so blocks and
    layer names stay KerasHub's.

    Args:
        layer: the KerasHub layer.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:

    >>> inner = keras.layers.Dense(2, name="dense_in_hub_layer")
    >>> layer = HubLayer(inner, name=inner.name)
    >>> tuple(layer(np.ones((1, 3))).shape)
    (1, 2)
    """

    def call(self, inputs):
        outputs = self.layer(inputs)
        if isinstance(outputs, (tuple, list)):
            return outputs[0]
        return outputs

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = dict(config.pop("layer"))
        extra = _UNACCEPTED_KEYS.get(layer.get("class_name"), ())
        layer["config"] = {
            k: v for k, v in layer["config"].items() if k not in extra
        }
        inner = keras.saving.deserialize_keras_object(
            layer, custom_objects=custom_objects
        )
        return cls(inner, **config)


def _rescaling(mean, std):
    """`Rescaling(scale, offset)` arguments for `(pixel / 255 - mean) / std`."""
    scale = tuple(1.0 / (255.0 * s) for s in std)
    offset = tuple(-m / s for m, s in zip(mean, std, strict=True))
    if len(set(scale)) == 1 and len(set(offset)) == 1:
        return scale[0], offset[0]
    return scale, offset


def _vision_model(model):
    """The image encoder of a KerasHub model (SigLIP and CLIP hold one)."""
    return getattr(model, "vision_encoder", model)


def flatten(family, vision, input_shape, pooling=None):
    """A flat functional `keras.Model` over a KerasHub vision model's layers.

    The same layer objects (and weights) as `vision`, called in the same
    order, with the embedding, every encoder layer and the final norm as
    direct layers.

    Example:

    >>> import keras_hub
    >>> vit = keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
    ...     hidden_dim=16, mlp_dim=32)
    >>> flat = flatten("vit", vit, (32, 32, 3))
    >>> [layer.name for layer in flat.layers][1:4]
    ['vit_patching_and_embedding', 'dropout', 'transformer_block_1']
    >>> x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3))
    >>> bool(np.allclose(flat.predict(x, verbose=0), vit.predict(x, verbose=0),
    ...                  atol=1e-5))
    True
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    pooling = pooling or family.pooling[0]
    inputs = keras.Input(input_shape, name="images")
    if family.name in ("vit", "deit"):
        encoder = vision.layers[2]
        stages = [vision.layers[1]]
        stages += [encoder.dropout] if family.name == "vit" else []
        stages += list(encoder.encoder_layers) + [encoder.layer_norm]
    elif family.name == "dinov2":
        stages = [vision.embeddings]
        stages += list(vision.encoder.layers) + [vision.layernorm]
    elif family.name == "dinov3":
        return _flatten_dinov3(vision, inputs)
    else:
        stages = [vision.embedding]
        stages += [vision.pre_layer_norm] if family.name == "clip" else []
        final = (
            vision.layer_norm if family.name == "clip"
            else vision.post_layer_norm
        )
        stages += list(vision.encoder_layers) + [final]
        if pooling == "map":
            stages.append(vision.head)
    x = inputs
    for layer in stages:
        if type(layer).__name__ in _UNACCEPTED_KEYS:
            layer = HubLayer(layer, name=layer.name)
        x = layer(x)
    return keras.Model(inputs, x, name=vision.name)


def _flatten_dinov3(vision, inputs):
    """DINOv3's encoder layers also take the rotary position embeddings
    (computed from the image size, no weights) and the prefix count."""
    x = vision.embeddings(inputs)
    positions = vision.rope_embedding(inputs)
    prefix = 1 + vision.num_register_tokens
    for layer in vision.encoder.layers:
        x = layer(x, position_embeddings=positions, num_prefix_tokens=prefix)
    x = vision.layernorm(x)
    return keras.Model(inputs, x, name=vision.name)


def _build_vision(family, preset, weights, input_shape, drop_path):
    keras_hub = hub.import_keras_hub()
    load = weights is not None
    if not load and preset == family.preset:
        # Random init needs no download: the preset's architecture is known.
        cls_name, arguments = family.architecture
        arguments = dict(arguments, image_shape=tuple(input_shape))
        if drop_path:
            arguments["drop_path_rate"] = float(drop_path)
        cls = getattr(keras_hub.models, cls_name)
        return cls(**arguments, dtype=keras.config.dtype_policy().name)
    name = f"{family.name}:{preset}"
    hint = (
        "Download it once where Kaggle or Hugging Face is reachable "
        f"(transfer.fetch_weights('hub:{preset}')), or pass a local preset "
        "directory."
    )
    with download.network_guard(name, [], hint):
        model = keras_hub.models.Backbone.from_preset(
            preset, load_weights=load,
            # A preset's config pins its dtype: follow the policy in force.
            dtype=keras.config.dtype_policy().name,
        )
    vision = _vision_model(model)
    config = vision.get_config()
    changes = {}
    if tuple(config["image_shape"][:2]) != tuple(input_shape[:2]):
        if load and not family.interpolates:
            size = config["image_shape"][0]
            raise ValueError(
                f"The {family.name} preset '{preset}' was trained at "
                f"{size} px and its position embeddings are not "
                f"interpolated: pass image_size={size}, or weights=None. "
                f"Received: image_size={input_shape[0]}"
            )
        changes["image_shape"] = tuple(input_shape)
    if drop_path:
        changes["drop_path_rate"] = float(drop_path)
    if changes:
        rebuilt = type(vision).from_config({**config, **changes})
        if load:
            # Through a file: DINOv2 interpolates its position embeddings
            # for the new size when it loads them.
            with tempfile.TemporaryDirectory() as directory:
                path = os.path.join(directory, "vision.weights.h5")
                vision.save_weights(path)
                rebuilt.load_weights(path)
        vision = rebuilt
    return vision


def prefix_tokens(family, config):
    """Tokens before the patch tokens: class, distillation, registers.

    Read from the family, not the output shape: SigLIP's embedding layer
    reports one token more than it returns.

    Example:

    >>> prefix_tokens("dinov2", {"num_register_tokens": 4})
    5
    """
    name = family if isinstance(family, str) else family.name
    if name == "vit":
        return 1 if config.get("use_class_token", True) else 0
    if name == "dinov2":
        return 1 + int(config.get("num_register_tokens", 0))
    if name == "dinov3":
        return 1 + int(config.get("num_register_tokens", 4))
    return {"deit": 2, "siglip": 0, "clip": 1}[name]


def _builder(family, preset, source, interpolation):
    def builder(weights, input_shape, pooling=None, drop_path=0.0):
        # A path is a `.weights.h5` file of this re-wired backbone.
        path = weights if weights not in (None, "imagenet", "preset") else None
        load = None if path else weights
        vision = _build_vision(family, preset, load, input_shape, drop_path)
        model = flatten(family, vision, input_shape, pooling)
        if path:
            model.load_weights(path)
        info = {
            "weights": weights,
            "source": source if weights is not None else "random init",
            "interpolation": interpolation,
            "prefix_tokens": prefix_tokens(family, vision.get_config()),
        }
        return model, info

    return builder


def family_spec(family, *, preset=None, name=None, num_layers=None,
                image_size=None, patch_size=None, rescaling=None,
                interpolation=None, description=None):
    """The `BackboneSpec` of a family, for its default preset or another.

    Example:

    >>> spec = family_spec("dinov2")
    >>> spec.image_size, spec.patch_size, spec.pooling, spec.options
    (224, 14, ('token', 'avg'), ('pooling', 'drop_path'))
    >>> len(spec.blocks)  # embedding, 12 encoder layers, final norm
    14
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    preset = preset or family.preset
    interpolation = interpolation or family.interpolation
    scale, offset = rescaling or _rescaling(family.mean, family.std)
    source = f"keras_hub:{preset}"
    if preset == family.preset:
        num_layers = family.num_layers
    patch_size = patch_size or family.patch_size
    return BackboneSpec(
        name=name or family.name,
        source="keras_hub",
        builder=_builder(family, preset, source, interpolation),
        image_size=image_size or family.image_size,
        min_image_size=patch_size,
        scale=scale,
        offset=offset,
        # `hub:` presets of other depths: inferred from the built model.
        blocks=family_blocks(family, num_layers) if num_layers else (),
        weights=("imagenet", "preset"),
        description=description or family.description,
        modality="image",
        pooling=family.pooling,
        patch_size=patch_size,
        options=("pooling", "drop_path") if family.drop_path else ("pooling",),
        lora_layers=family.lora_layers,
        interpolation=interpolation,
    )


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _converter_preprocessing(preset):
    """`(image_size, (scale, offset), interpolation)` from a local preset's
    `image_converter.json`, or `None`s where it has none."""
    found = _read_json(os.path.join(preset, "image_converter.json"))
    if not found:
        return None, None, None
    config = found.get("config", {})
    size = config.get("image_size")
    size = int(size[0]) if isinstance(size, (list, tuple)) else size
    scale, offset = config.get("scale"), config.get("offset")
    rescaling = None
    if scale is not None:
        scale = tuple(scale) if isinstance(scale, (list, tuple)) else scale
        offset = 0.0 if offset is None else offset
        offset = tuple(offset) if isinstance(offset, (list, tuple)) else offset
        rescaling = (scale, offset)
    return size, rescaling, config.get("interpolation")


def preset_spec(preset):
    """The family spec for a KerasHub preset id or local preset folder of a
    family here, or `None` (other classes keep `hub.hub_spec`)."""
    if os.path.isdir(preset):
        found = hub.read_preset_config(preset) or {}
        class_name = found.get("class_name")
        config = found.get("config") or {}
        if "vision_encoder" in config:
            config = config["vision_encoder"].get("config", {})
        family = next(
            (f for f in FAMILIES.values() if class_name in f.classes), None
        )
        if family is None:
            return None
        shape = config.get("image_shape") or [family.image_size]
        size, rescaling, interpolation = _converter_preprocessing(preset)
        patch = config.get("patch_size", family.patch_size)
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return family_spec(
            family, preset=preset, name=hub.preset_name(preset),
            num_layers=config.get("num_layers"),
            image_size=size or shape[0], patch_size=int(patch),
            rescaling=rescaling, interpolation=interpolation,
            description=f"{family.name} preset folder {preset}",
        )
    keras_hub = hub.import_keras_hub()
    for family in FAMILIES.values():
        cls = getattr(keras_hub.models, family.classes[0], None)
        if cls is not None and preset in cls.presets:
            size = re.search(r"_(\d{3})(_|$)", preset)
            patch = re.search(r"patch(\d+)", preset)
            return family_spec(
                family, preset=preset, name=hub.preset_name(preset),
                image_size=int(size.group(1)) if size else None,
                patch_size=int(patch.group(1)) if patch else None,
                description=f"{family.name} KerasHub preset {preset}",
            )
    return None


def drop_path_families():
    """Names of the registered families that take a `drop_path` rate."""
    return sorted(f.name for f in FAMILIES.values() if f.drop_path)


for _family in FAMILIES.values():
    register_backbone(family_spec(_family))
