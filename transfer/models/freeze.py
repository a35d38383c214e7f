"""Block-level `trainable` flags for a classifier built by `transfer`."""

import dataclasses
import logging
import re
from typing import Tuple

import keras
import numpy as np

from transfer import _model_info
from transfer.backbones import registry
from transfer.backbones.blocks import assign_blocks
from transfer.backbones.blocks import flatten_layers
from transfer.backbones.blocks import infer_blocks
from transfer.backbones.text_families import family_blocks

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class FreezePlan:
    """What `set_trainable_blocks` froze: blocks, layers and parameters.

    `blocks` holds one `(name, pattern, trainable, trainable_params,
    total_params)` tuple per backbone block, stem first, then the head.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> plan = transfer.set_trainable_blocks(model, 1)
    >>> print(plan)
    trainable_blocks=1: 221,442 trainable / 73,776 frozen parameters
    (75.01% trainable)
      frozen stem                                   0 / 2,864
      frozen block1                                 0 / 14,080
      frozen block2                                 0 / 55,808
      train  block3                           221,184 / 222,208
      train  head                                 258 / 258
    """

    trainable_blocks: object
    train_batchnorm: bool
    blocks: Tuple[tuple, ...]
    trainable_layers: Tuple[str, ...]
    trainable_params: int
    non_trainable_params: int

    def to_dict(self):
        return {
            "trainable_blocks": self.trainable_blocks,
            "train_batchnorm": self.train_batchnorm,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "trainable_share": self.trainable_share,
            "num_trainable_layers": len(self.trainable_layers),
            "blocks": [
                {
                    "name": name,
                    "pattern": pattern,
                    "trainable": trainable,
                    "trainable_params": n_train,
                    "params": n_total,
                }
                for name, pattern, trainable, n_train, n_total in self.blocks
            ],
        }

    @property
    def trainable_share(self):
        """Trainable parameters as a fraction of all parameters."""
        total = self.trainable_params + self.non_trainable_params
        return round(self.trainable_params / total, 6) if total else 0.0

    def __str__(self):
        lines = [
            f"trainable_blocks={self.trainable_blocks!r}: "
            f"{self.trainable_params:,} trainable / "
            f"{self.non_trainable_params:,} frozen parameters "
            f"({100 * self.trainable_share:.2f}% trainable)"
        ]
        for name, _, trainable, n_train, n_total in self.blocks:
            mark = "train " if trainable else "frozen"
            lines.append(f"  {mark} {name:<28} {n_train:>11,} / {n_total:,}")
        return "\n".join(lines)


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def backbone_blocks(backbone):
    """Block regexes for a nested backbone: its spec's, its text family's
    (by KerasHub class), else inferred from its layer names."""
    spec = registry.registered_spec(backbone.name)
    if spec is not None and spec.blocks:
        return spec.blocks
    return family_blocks(backbone) or infer_blocks(backbone)


def _resolve_count(trainable_blocks, num_blocks):
    if trainable_blocks == "all":
        return num_blocks
    if (
        isinstance(trainable_blocks, bool)
        or not isinstance(trainable_blocks, (int, np.integer))
        or trainable_blocks < 0
    ):
        raise ValueError(
            "`trainable_blocks` must be 0 (head only), a positive number of "
            "top blocks, or 'all'. "
            f"Received: trainable_blocks={trainable_blocks!r}"
        )
    if trainable_blocks > num_blocks:
        raise ValueError(
            f"The backbone has {num_blocks} blocks, so `trainable_blocks` "
            f"can be at most {num_blocks} (or 'all'). "
            f"Received: trainable_blocks={trainable_blocks!r}"
        )
    return int(trainable_blocks)


def set_trainable_blocks(
    model, trainable_blocks, *, train_batchnorm=False, blocks=None
):
    """Sets `trainable` on every layer of `model` in place, block by block.

    The head (`pooler`, `head_dropout`, `predictions`) always trains. Of the
    backbone's blocks (stem first), the last `trainable_blocks` train and the
    rest are frozen. `BatchNormalization` layers stay frozen unless
    `train_batchnorm=True`: in Keras 3 a frozen BN layer also runs in
    inference mode, so its moving statistics stay fixed while the blocks
    around it train. Every flag is set explicitly, on every nested layer.

    Recompile the model after calling this: `fit_recipe` does.

    Args:
        model: a classifier from `transfer.build_classifier` (or a reloaded
            `.keras` file of one).
        trainable_blocks: `0` for the head only, `N` for the last `N` backbone
            blocks too, or `"all"`.
        train_batchnorm: let BatchNormalization layers in trainable blocks
            train and update their statistics. Defaults to `False`.
        blocks: block regexes overriding the backbone's spec.
            Defaults to `None`.

    Returns:
        A `FreezePlan`, also logged at INFO level.

    Example:

    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> plan = transfer.set_trainable_blocks(model, 1)
    >>> [name for name, _, trainable, _, _ in plan.blocks if trainable]
    ['block3', 'head']
    >>> plan.trainable_share
    0.750097
    """
    backbone = _model_info.find_backbone(model)
    patterns = tuple(blocks) if blocks else backbone_blocks(backbone)
    count = _resolve_count(trainable_blocks, len(patterns))
    first_trainable = len(patterns) - count
    assignment = assign_blocks(backbone, patterns)

    # Top-down: trainable=True propagates to every sublayer; then freeze.
    model.trainable = True
    for layer, index in assignment:
        layer.trainable = index >= first_trainable
    if not train_batchnorm:
        for layer in flatten_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    _keep_lora_base_frozen(backbone, assignment, first_trainable)

    summary = []
    for index, pattern in enumerate(patterns):
        members = [layer for layer, i in assignment if i == index]
        weights = [w for layer in members for w in layer.weights]
        trainable = [w for layer in members for w in layer.trainable_weights]
        summary.append(
            (
                _display_name(pattern),
                pattern,
                index >= first_trainable,
                _count(trainable),
                _count(weights),
            )
        )
    head = [layer for layer in model.layers if layer is not backbone]
    head_weights = [w for layer in head for w in layer.weights]
    summary.append(
        ("head", "", True, _count(head_weights), _count(head_weights))
    )
    trainable_layers = tuple(
        layer.name
        for layer in flatten_layers(model)
        if layer.trainable_weights and not flatten_layers(layer)
    )
    plan = FreezePlan(
        trainable_blocks=trainable_blocks,
        train_batchnorm=train_batchnorm,
        blocks=tuple(summary),
        trainable_layers=trainable_layers,
        trainable_params=_count(model.trainable_weights),
        non_trainable_params=_count(model.non_trainable_weights),
    )
    logger.info("Freeze plan for %s:\n%s", model.name, plan)
    return plan


def _display_name(pattern):
    # `(^|_)name$`: a layer name that may carry a KerasHub name prefix.
    pattern = pattern.replace("(^|_)", "^")
    name = re.sub(r"\[.*?\]|\(\?!.*?\)|[\^$\\?]", "", pattern)
    name = name.replace("_|", "|").replace("_)", ")")
    if len(name) > 24 and "|" in name:
        name = name.strip("(").split("|")[0] + "+"
    return name.strip("_") or pattern


def _is_lora(layer):
    return bool(getattr(layer, "lora_enabled", False))


def _keep_lora_base_frozen(backbone, assignment, first_trainable):
    """With LoRA adapters, only the adapters (and the head) ever train.

    `layer.trainable = True` re-enables every variable a layer created as
    trainable, LoRA's frozen base kernel included, so the base weights of
    the backbone are frozen again here and the adapters of the trainable
    blocks are left on.
    """
    lora_layers = [x for x in flatten_layers(backbone) if _is_lora(x)]
    if not lora_layers:
        return
    trainable_ids = set()
    for layer, index in assignment:
        if index >= first_trainable:
            trainable_ids.update(id(x) for x in flatten_layers(layer))
            trainable_ids.add(id(layer))
    for layer in flatten_layers(backbone):
        if _is_lora(layer):
            layer.trainable = id(layer) in trainable_ids
            # The base kernel stays frozen; only lora_kernel_a/b train.
            layer._kernel.trainable = False
        elif not any(_is_lora(x) for x in flatten_layers(layer)):
            # Leaves, and layers with weights of their own but no adapter
            # inside (DeBERTa's `rel_embedding`): frozen.
            layer.trainable = False
        else:
            # A layer with sublayers may own variables too (a class token,
            # a pooling probe): those are base weights as well.
            inner = {id(w) for sub in flatten_layers(layer) for w in sub.weights}
            for weight in layer.weights:
                if id(weight) not in inner:
                    weight.trainable = False

