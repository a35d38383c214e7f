"""The backbone registry: names to `BackboneSpec`s, with helpful errors."""

import difflib
import os

from transfer.backbones.spec import BackboneSpec

_REGISTRY = {}


def register_backbone(spec, *, override=False):
    """Adds a `BackboneSpec` to the registry under `spec.name`.

    Args:
        spec: the `BackboneSpec` to register.
        override: replace an existing spec of the same name.
            Defaults to `False`.

    Returns:
        The spec, so that registration can be used inline.
    """
    if not isinstance(spec, BackboneSpec):
        raise TypeError(
            "register_backbone() takes a `transfer.BackboneSpec`. "
            f"Received: spec={spec!r}"
        )
    if spec.name in _REGISTRY and not override:
        raise ValueError(
            f"A backbone named '{spec.name}' is already registered. Pass "
            f"override=True to replace it. Received: name={spec.name!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(modality=None):
    """Names of registered backbones, sorted.

    Besides these names, `build_classifier` accepts `"hub:<preset>"` for a
    KerasHub image preset, a local KerasHub preset directory, a `.keras` file
    holding a backbone model, and a `BackboneSpec`;
    `build_text_classifier` accepts text presets the same way.

    Args:
        modality: `"image"`, `"text"`, or `None` for all. Defaults to `None`.
    """
    return sorted(
        name for name, spec in _REGISTRY.items()
        if modality is None or spec.modality == modality
    )


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
    """
    if isinstance(backbone, BackboneSpec):
        return backbone
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(
            "`backbone` must be a registered name, 'hub:<preset>', a path or "
            f"a BackboneSpec. Received: backbone={backbone!r}"
        )
    if backbone in _REGISTRY:
        spec = _REGISTRY[backbone]
        if spec.modality != modality:
            names = [n for n, s in _REGISTRY.items() if s.modality == modality]
            raise ValueError(
                f"Backbone '{backbone}' is for {spec.modality} models, but "
                f"this needs one for {modality} models: {sorted(names)}. "
                f"Received: backbone={backbone!r}"
            )
        return spec
    if backbone.startswith("hub:") or os.path.isdir(backbone):
        preset = backbone[len("hub:") :] if backbone.startswith("hub:") else backbone
        if modality == "text":
            from transfer.backbones import text

            return text.text_preset_spec(preset)
        from transfer.backbones import hub

        return hub.hub_spec(preset)
    if backbone.endswith(".keras"):
        from transfer.backbones import local

        return local.keras_file_spec(backbone)
    same_kind = [n for n, s in _REGISTRY.items() if s.modality == modality]
    close = difflib.get_close_matches(backbone, same_kind, n=3)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(
        f"Unknown backbone '{backbone}'. {hint}See transfer.list_backbones(), "
        "pass a KerasHub preset as 'hub:<preset>', a local preset directory "
        f"or a .keras file. Received: backbone={backbone!r}"
    )
