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


def list_backbones():
    """Names of all registered backbones, sorted.

    Besides these names, `build_classifier` accepts `"hub:<preset>"` for a
    KerasHub image preset, a local KerasHub preset directory, a `.keras` file
    holding a backbone model, and a `BackboneSpec`.
    """
    return sorted(_REGISTRY)


def get_backbone_spec(backbone):
    """Resolves a registry name, `hub:` preset, path or spec to a spec.

    Args:
        backbone: a registered name (`"efficientnet_b0"`), `"hub:<preset>"`,
            a local KerasHub preset directory, a `.keras` file holding a
            backbone model, or a `BackboneSpec`.

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
        return _REGISTRY[backbone]
    if backbone.startswith("hub:"):
        from transfer.backbones import hub

        return hub.hub_spec(backbone[len("hub:") :])
    if os.path.isdir(backbone):
        from transfer.backbones import hub

        return hub.hub_spec(backbone)
    if backbone.endswith(".keras"):
        from transfer.backbones import local

        return local.keras_file_spec(backbone)
    close = difflib.get_close_matches(backbone, list(_REGISTRY), n=3)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(
        f"Unknown backbone '{backbone}'. {hint}See transfer.list_backbones(), "
        "pass a KerasHub preset as 'hub:<preset>', a local preset directory "
        f"or a .keras file. Received: backbone={backbone!r}"
    )
