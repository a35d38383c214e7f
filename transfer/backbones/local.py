"""Backbones saved as `.keras` files (for example by self-supervised runs)."""

import os

from transfer.backbones import registry
from transfer.backbones.spec import BackboneSpec
from transfer.saving import load_model
from transfer.weights import download


def keras_file_spec(path, image_size=None):
    """A `BackboneSpec` for a `.keras` file that holds a backbone model.

    The file is loaded in Keras's safe mode. When the saved model's name is
    a registered backbone, that spec's blocks and preprocessing (scale,
    offset, interpolation) are reused, and for a vision transformer its
    pooling choices, patch size and LoRA layers too; the number of class
    and register tokens before the patch tokens is read from the saved
    model's token count.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Backbone file '{path}' does not exist. Pass a registered name "
            f"(transfer.list_backbones()) or an existing .keras file. "
            f"Received: backbone={path!r}"
        )
    model = load_model(path)
    base = registry.registered_spec(model.name)
    input_size = model.input_shape[1] if model.input_shape[1] else None
    patch_size = base.patch_size if base else None
    tokens = {}
    if patch_size and input_size and len(model.output_shape) == 3:
        patches = (input_size // patch_size) ** 2
        tokens["prefix_tokens"] = max(0, model.output_shape[1] - patches)

    def builder(weights, input_shape):
        info = download.describe_file(path, "file", "file")
        if weights is None:
            clone = model.__class__.from_config(model.get_config())
            return clone, {"weights": None, "source": "random init", **tokens}
        # Loaded again here, so that its variables are made in the scope
        # active now (a `transfer.distribution_scope`, for one).
        return load_model(path), {**info, **tokens}

    transformer = {}
    if base is not None and patch_size:
        transformer = {"pooling": base.pooling, "patch_size": patch_size,
                       "lora_layers": base.lora_layers}

    return BackboneSpec(
        name=model.name,
        source="file",
        builder=builder,
        image_size=image_size or input_size or (base.image_size if base else 224),
        min_image_size=base.min_image_size if base else 32,
        scale=base.scale if base else 1.0,
        offset=base.offset if base else 0.0,
        blocks=base.blocks if base else (),
        interpolation=base.interpolation if base else "bilinear",
        weights=("file",),
        description=f"local file {path}",
        **transformer,
    )
