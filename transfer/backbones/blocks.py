"""Assigning backbone layers to blocks, given regexes or inferred."""

import re

from transfer.backbones import vision_transformers


def flatten_layers(layer):
    """Every layer below `layer` (itself excluded), depth first, in order.

    Keras has no public recursive listing; `_flatten_layers` is what
    `Layer.trainable` itself walks, so the two always agree.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


def assign_blocks(backbone, patterns):
    """Maps each direct layer of `backbone` to a block index.

    A layer belongs to the first pattern that matches its name; a layer that
    matches none (auto-named activations, adds, paddings) joins the block of
    the layer before it, and leading unmatched layers join the stem.

    Returns:
        A list of `(layer, block_index)` in layer order.

    Raises:
        ValueError: a pattern matches no layer.
    """
    compiled = [re.compile(p) for p in patterns]
    assignment = []
    current = 0
    matched = set()
    for layer in backbone.layers:
        for index, regex in enumerate(compiled):
            if regex.search(layer.name):
                current = index
                matched.add(index)
                break
        assignment.append((layer, current))
    missing = [patterns[i] for i in range(len(patterns)) if i not in matched]
    if missing:
        raise ValueError(
            f"Block patterns {missing} match no layer of backbone "
            f"'{backbone.name}'. Check the spec's `blocks` against "
            "`[layer.name for layer in backbone.layers]`. "
            f"Received: blocks={list(patterns)}"
        )
    return assignment


def transformer_blocks(num_layers):
    """Embeddings first, then one block per transformer layer."""
    return (
        "^(embeddings_|token_embedding|position_embedding|segment_embedding)",
    ) + tuple(f"^transformer_layer_{i}$" for i in range(num_layers))


def infer_blocks(backbone):
    """Block regexes for a backbone that has no spec, from its layer names.

    Transformer encoders (`transformer_layer_<i>`) get the embeddings as the
    stem and one block per layer; re-wired vision transformers (ViT, DeiT,
    DINOv2, SigLIP, CLIP) their family's blocks. Otherwise uses the first `_`-separated
    token of each layer that holds weights, with
    a trailing sub-block letter dropped (`block3b_...` -> `block3`), so
    `stem_*`, `block1a_*`, ..., `top_*` become blocks in order.
    """
    import keras

    family = vision_transformers.infer_family_blocks(backbone)
    if family is not None:
        return family
    transformer = [
        layer.name for layer in backbone.layers
        if re.fullmatch(r"transformer_layer_\d+", layer.name)
    ]
    if transformer:
        return transformer_blocks(len(transformer))
    keys = []
    for layer in backbone.layers:
        # Normalization holds statistics, not learned weights: it is input
        # preprocessing and joins the stem.
        if not layer.weights or isinstance(layer, keras.layers.Normalization):
            continue
        token = re.split(r"[_.]", layer.name)[0]
        key = re.sub(r"(\d+)[a-z]$", r"\1", token)
        if key not in keys:
            keys.append(key)
    return tuple(f"^{re.escape(k)}([a-z])?(_|$)" for k in keys)
