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

    Example:

    >>> import dataclasses
    >>> spec = dataclasses.replace(
    ...     transfer.get_backbone_spec("small_cnn"), name="small_cnn_64",
    ...     image_size=64)
    >>> transfer.register_backbone(spec, override=True).name
    'small_cnn_64'
    >>> model = transfer.build_classifier("small_cnn_64", 2, weights=None)
    >>> model.input_shape
    (None, 64, 64, 3)
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

    Example:

    >>> "small_cnn" in transfer.list_backbones("image")
    True
    >>> transfer.list_backbones("text")
    ['minilm_l6']
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
