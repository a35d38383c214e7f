"""The backbone registry: a plain mapping of names to `BackboneSpec`s.

Resolving other kinds of names (`hub:<preset>`, directories, `.keras`
files) is `transfer.backbones.resolve`'s job.
"""

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



def registered_spec(name):
    """The spec registered under `name`, or `None`."""
    return _REGISTRY.get(name)


def registered_names(modality=None):
    """Registered names of one modality (all for `None`), in registry order."""
    return [
        name for name, spec in _REGISTRY.items()
        if modality is None or spec.modality == modality
    ]
