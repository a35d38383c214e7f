"""Any backbone name to a `BackboneSpec`: registered names, `hub:<preset>`,
local KerasHub preset directories and `.keras` files."""

import difflib
import os

from transfer.backbones import hub
from transfer.backbones import local
from transfer.backbones import registry
from transfer.backbones import text
from transfer.backbones import text_families
from transfer.backbones import vision_transformers
from transfer.backbones.spec import BackboneSpec


def get_backbone_spec(backbone, modality="image"):
    """Resolves a registry name, `hub:` preset, path or spec to a spec.

    Args:
        backbone: a registered name (`"efficientnet_b0"`), `"hub:<preset>"`,
            a local KerasHub preset directory, a `.keras` file holding a
            backbone model, or a `BackboneSpec`.
        modality: `"image"` or `"text"`: which kind of spec a `hub:` preset
            or directory becomes, and which registered names fit.
            Defaults to `"image"`.

    Returns:
        A `BackboneSpec`.

    Raises:
        ValueError: the name is unknown; the message lists the closest names.

    Example:

    >>> spec = transfer.get_backbone_spec("small_cnn")
    >>> spec.image_size, spec.min_image_size, spec.blocks
    (32, 16, ('^stem_', '^block1_', '^block2_', '^block3_'))
    >>> transfer.get_backbone_spec("small_cn")
    Traceback (most recent call last):
        ...
    ValueError: Unknown backbone 'small_cn'. Did you mean 'small_cnn'...
    """
    if isinstance(backbone, BackboneSpec):
        return backbone
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(
            "`backbone` must be a registered name, 'hub:<preset>', a path or "
            f"a BackboneSpec. Received: backbone={backbone!r}"
        )
    spec = registry.registered_spec(backbone)
    if spec is not None:
        if spec.modality != modality:
            names = registry.registered_names(modality)
            raise ValueError(
                f"Backbone '{backbone}' is for {spec.modality} models, but "
                f"this needs one for {modality} models: {sorted(names)}. "
                f"Received: backbone={backbone!r}"
            )
        return spec
    if backbone.startswith("hub:") or os.path.isdir(backbone):
        preset = backbone[len("hub:") :] if backbone.startswith("hub:") else backbone
        if modality == "text":
            return text.text_preset_spec(preset)
        _check_not_text(preset, backbone)
        family = vision_transformers.preset_spec(preset)
        return family if family is not None else hub.hub_spec(preset)
    if backbone.endswith(".keras"):
        return local.keras_file_spec(backbone)
    same_kind = registry.registered_names(modality)
    close = difflib.get_close_matches(backbone, same_kind, n=3)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(
        f"Unknown backbone '{backbone}'. {hint}See transfer.list_backbones(), "
        "pass a KerasHub preset as 'hub:<preset>', a local preset directory "
        f"or a .keras file. Received: backbone={backbone!r}"
    )


def _check_not_text(preset, backbone):
    """Raises when an image model is asked to use a text encoder preset: a
    folder with a tokenizer or a text family's class, or a KerasHub text
    preset name."""
    if os.path.isdir(preset):
        config = hub.read_preset_config(preset) or {}
        class_name = config.get("class_name")
        tokenizer = os.path.exists(os.path.join(preset, "tokenizer.json"))
        if not tokenizer and class_name not in text_families.FAMILIES:
            return
        what = f"Preset folder '{preset}' holds a text encoder"
    else:
        family, _, class_name = text_families.preset_family(preset)
        if family is None:
            return
        what = f"KerasHub preset '{preset}' is a text encoder"
    kind = f" ({class_name})" if class_name else ""
    raise ValueError(
        f"{what}{kind}, not an image backbone. Image classifiers take a "
        "registered image backbone (transfer.list_backbones()), an image "
        "preset (`hub:<preset>`) or folder; a text preset goes to "
        "transfer.build_text_classifier (`transfer train --modality text` "
        f"with text data). Received: backbone={backbone!r}"
    )
