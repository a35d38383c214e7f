"""Tiny random-init presets of every text encoder family, built offline.

Each is the family's real KerasHub backbone class with 2 small layers and a
tokenizer over `tiny_bert.WORDS`, saved with `save_to_preset`: WordPiece
vocabularies for BERT, DistilBERT and ELECTRA, a byte-pair vocabulary and
merges for RoBERTa, SentencePiece models (trained here, in a second) for
DeBERTa-v3, XLM-RoBERTa and ALBERT. No weights, no network.
"""

import io
import os

from tiny_bert import VOCAB
from tiny_bert import WORDS

SMALL = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=32)

# The layer names of each family's KerasHub backbone class, in order, at
# this size: the contract `transfer.backbones.text_families` is written to.
EXPECTED_LAYERS = {
    "bert": ["token_ids", "token_embedding", "segment_ids",
             "position_embedding", "segment_embedding", "embeddings_add",
             "embeddings_layer_norm", "embeddings_dropout", "padding_mask",
             "transformer_layer_0", "transformer_layer_1", "pooled_dense"],
    "roberta": ["token_ids", "embeddings", "embeddings_layer_norm",
                "embeddings_dropout", "padding_mask", "transformer_layer_0",
                "transformer_layer_1"],
    "deberta_v3": ["token_ids", "token_embedding", "embeddings_layer_norm",
                   "embeddings_dropout", "padding_mask", "rel_embedding",
                   "disentangled_attention_encoder_layer_0",
                   "disentangled_attention_encoder_layer_1"],
    "distil_bert": ["token_ids", "token_and_position_embedding",
                    "embeddings_layer_norm", "embeddings_dropout",
                    "padding_mask", "transformer_layer_0",
                    "transformer_layer_1"],
    "electra": ["token_ids", "token_embedding", "segment_ids",
                "position_embedding", "segment_embedding", "embeddings_add",
                "embeddings_layer_norm", "embeddings_dropout",
                "embeddings_projection", "padding_mask",
                "transformer_layer_0", "transformer_layer_1", "pooled_dense"],
    "albert": ["token_ids", "token_embedding", "segment_ids",
               "position_embedding", "segment_embedding", "embeddings_add",
               "embeddings_layer_norm", "embeddings_dropout",
               "embedding_projection", "padding_mask",
               "group_0_inner_layer_0", "group_1_inner_layer_0",
               "pooled_dense"],
}
EXPECTED_LAYERS["xlm_roberta"] = EXPECTED_LAYERS["roberta"]
# The layers of the top block besides the encoder layer itself.
TOP_EXTRAS = {"bert": ["pooled_dense"], "electra": ["pooled_dense"],
              "albert": ["pooled_dense"]}
FAMILIES = ("roberta", "xlm_roberta", "deberta_v3", "distil_bert", "electra",
            "albert", "bert")


def _corpus():
    return [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]


def _sentencepiece(**pieces):
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model,
        vocab_size=len(WORDS) + 8, model_type="WORD", hard_vocab_limit=False,
        minloglevel=2, **pieces,
    )
    return model.getvalue()


def _byte_pairs():
    """A RoBERTa vocabulary and merges spelling every word, with and
    without the leading-space marker `Ġ`."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<mask>": 3}
    merges = []
    for word in WORDS:
        for chars in (list(word), ["\u0120"] + list(word)):
            for char in chars:
                vocab.setdefault(char, len(vocab))
            token = chars[0]
            for char in chars[1:]:
                if f"{token} {char}" not in merges:
                    merges.append(f"{token} {char}")
                token += char
                vocab.setdefault(token, len(vocab))
    return vocab, merges


def _build(family):
    import keras_hub

    models = keras_hub.models
    if family == "bert":
        tokenizer = models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
        return models.BertBackbone(vocabulary_size=len(VOCAB), **SMALL), tokenizer
    if family == "distil_bert":
        tokenizer = models.DistilBertTokenizer(vocabulary=VOCAB, lowercase=True)
        return models.DistilBertBackbone(
            vocabulary_size=len(VOCAB), **SMALL), tokenizer
    if family == "electra":
        tokenizer = models.ElectraTokenizer(vocabulary=VOCAB, lowercase=True)
        return models.ElectraBackbone(
            vocab_size=len(VOCAB), embedding_dim=8, **SMALL), tokenizer
    if family == "roberta":
        vocab, merges = _byte_pairs()
        tokenizer = models.RobertaTokenizer(vocabulary=vocab, merges=merges)
        return models.RobertaBackbone(
            vocabulary_size=len(vocab), **SMALL), tokenizer
    if family == "deberta_v3":
        tokenizer = models.DebertaV3Tokenizer(proto=_sentencepiece(
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]",
            bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]"))
        return models.DebertaV3Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), bucket_size=8,
            **SMALL), tokenizer
    if family == "xlm_roberta":
        tokenizer = models.XLMRobertaTokenizer(
            proto=_sentencepiece(unk_id=0, bos_id=1, eos_id=2))
        return models.XLMRobertaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), **SMALL), tokenizer
    if family == "albert":
        tokenizer = models.AlbertTokenizer(proto=_sentencepiece(
            pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
            unk_piece="<unk>", bos_piece="[CLS]", eos_piece="[SEP]",
            user_defined_symbols="[MASK]"))
        return models.AlbertBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=8,
            num_groups=2, **SMALL), tokenizer
    raise ValueError(f"No tiny preset for family {family!r}")


def make_tiny_text_preset(family, directory, seed=0):
    """Saves a tiny random-init preset of `family` in `directory`."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone, tokenizer = _build(family)
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    tokenizer.save_to_preset(directory)
    return directory
