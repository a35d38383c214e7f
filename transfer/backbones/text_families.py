"""Text encoder families: one `TextFamily` per KerasHub encoder class.

A family names its KerasHub backbone class, its blocks (the embedding
layers, then each encoder layer, by the class's real layer names) and the
KerasHub classifier that puts a head on it. A `hub:<preset>` or a local
preset folder is matched to its family by its backbone class (a local
folder's `config.json`, or the KerasHub class whose `presets` list the
name), so its blocks are exact, not inferred; a built or reloaded backbone
is matched by its class the same way.

Adding a family is one `TextFamily(...)` in `FAMILIES`, plus a tiny preset
in tests/tiny_text_presets.py for the contract test.
"""

import dataclasses
import os
from typing import Tuple

from transfer.backbones import hub

# Layers of KerasHub encoders that hold no weights of their own before the
# first block (the inputs) join the stem: `assign_blocks` does that.
_BERT_STEM = (
    "^(embeddings_|token_embedding|position_embedding|segment_embedding"
    "|embedding_projection)"
)


@dataclasses.dataclass(frozen=True)
class TextFamily:
    """How `transfer` splits one KerasHub text encoder class into blocks.

    Args:
        name: family name, lowercase (`"roberta"`).
        backbone_class: the KerasHub backbone class name
            (`"RobertaBackbone"`).
        stem: regex of the embedding layers, the first block.
        layer: regex of block `i` (`"^transformer_layer_{i}$"`).
        count: the backbone attribute giving the number of blocks after the
            stem. Defaults to `"num_layers"`.
        classifier: KerasHub task class used when KerasHub has no text
            classifier for this backbone class (ELECTRA), else `""`: the
            preset's own `TextClassifier`. Defaults to `""`.
        example_presets: KerasHub preset names, for docs and errors.
            Defaults to `()`.
    """

    name: str
    backbone_class: str
    stem: str
    layer: str
    count: str = "num_layers"
    classifier: str = ""
    example_presets: Tuple[str, ...] = ()

    def blocks(self, num_blocks):
        """Block regexes, stem first, for `num_blocks` encoder blocks.

        Example:

        >>> FAMILIES["DebertaV3Backbone"].blocks(2)[1:]
        ('^disentangled_attention_encoder_layer_0$',
         '^disentangled_attention_encoder_layer_1$')
        """
        return (self.stem,) + tuple(
            self.layer.format(i=i) for i in range(num_blocks)
        )


_FAMILY_LIST = (
    TextFamily("bert", "BertBackbone", _BERT_STEM, "^transformer_layer_{i}$",
               example_presets=("bert_base_en_uncased", "bert_tiny_en_uncased")),
    TextFamily("roberta", "RobertaBackbone", "^embeddings",
               "^transformer_layer_{i}$",
               example_presets=("roberta_base_en", "roberta_large_en")),
    TextFamily("xlm_roberta", "XLMRobertaBackbone", "^embeddings",
               "^transformer_layer_{i}$",
               example_presets=("xlm_roberta_base_multi",)),
    # `rel_embedding` (relative positions, shared by every layer) is
    # built after the token embeddings: it joins the stem.
    TextFamily("deberta_v3", "DebertaV3Backbone",
               "^(token_embedding|embeddings_|rel_embedding)",
               "^disentangled_attention_encoder_layer_{i}$",
               example_presets=("deberta_v3_small_en", "deberta_v3_base_en")),
    TextFamily("distil_bert", "DistilBertBackbone",
               "^(token_and_position_embedding|embeddings_)",
               "^transformer_layer_{i}$",
               example_presets=("distil_bert_base_en_uncased",)),
    # KerasHub 0.32 has no ELECTRA classifier: BERT's head (dropout and a
    # dense layer on `pooled_output`) takes ELECTRA's identical inputs.
    TextFamily("electra", "ElectraBackbone", _BERT_STEM,
               "^transformer_layer_{i}$", classifier="BertTextClassifier",
               example_presets=("electra_small_discriminator_uncased_en",
                                "electra_base_discriminator_uncased_en")),
    # ALBERT shares one layer's weights across its depth: a block is a
    # group of shared layers (every KerasHub ALBERT preset has one group).
    TextFamily("albert", "AlbertBackbone", _BERT_STEM,
               "^group_{i}_inner_layer_\\d+$", count="num_groups",
               example_presets=("albert_base_en_uncased",)),
)
FAMILIES = {family.backbone_class: family for family in _FAMILY_LIST}


def family_names():
    """Family names, in registry order.

    Example:

    >>> family_names()
    ['bert', 'roberta', 'xlm_roberta', 'deberta_v3', 'distil_bert', 'electra', 'albert']
    """
    return [family.name for family in _FAMILY_LIST]


def family_of(backbone):
    """The `TextFamily` of a built KerasHub backbone, or `None`.

    Matched by class name, the backbone's own first, then its bases (a
    subclass of `RobertaBackbone` is a RoBERTa).
    """
    for cls in type(backbone).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    return None


def family_blocks(backbone):
    """Exact block regexes of a built text backbone, or `None` (unknown)."""
    family = family_of(backbone)
    if family is None:
        return None
    return family.blocks(int(getattr(backbone, family.count)))


def preset_family(preset):
    """`(family, num_blocks, class_name)` of a preset, as far as known
    without building it.

    A local folder is read from its `config.json` (a KerasHub preset's
    `class_name` and `config`); a KerasHub name is looked up in each family
    class's `presets`, and its depth is known once it is built (`None`). A
    Hugging Face folder or an unknown name gives `(None, None, None)`.

    Raises:
        ValueError: a local KerasHub preset folder holds no tokenizer (an
            image preset, for one): the message names its backbone class.
    """
    if os.path.isdir(str(preset)):
        config = hub.read_preset_config(preset)
        if not config or "class_name" not in config:
            return None, None, None  # a Hugging Face folder: converted later
        class_name = str(config["class_name"])
        if not os.path.exists(os.path.join(preset, "tokenizer.json")):
            raise ValueError(
                f"Preset folder '{preset}' holds a {class_name} without a "
                "tokenizer (tokenizer.json), so it is not a text preset. "
                "Text classifiers take a text encoder preset: families "
                f"{family_names()}; an image preset goes to "
                f"transfer.build_classifier. Received: backbone={preset!r}"
            )
        family = FAMILIES.get(class_name)
        if family is None:
            return None, None, class_name
        inner = config.get("config") or {}
        count = inner.get(family.count)
        return family, (int(count) if count is not None else None), class_name
    import keras_hub  # optional: only text presets need it

    found = []
    for family in _FAMILY_LIST:
        cls = getattr(keras_hub.models, family.backbone_class, None)
        if cls is not None and preset in getattr(cls, "presets", {}):
            found.append((len(cls.__mro__), family))
    if not found:
        return None, None, None
    # A base class lists its subclasses' presets too (RoBERTa lists
    # XLM-RoBERTa's): the most derived class is the preset's own.
    family = max(found, key=lambda item: item[0])[1]
    return family, None, family.backbone_class
