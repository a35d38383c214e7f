"""A tiny BERT preset built from a small config: no weights, no network."""

import os

WORDS = ["red", "apple", "cherry", "fire", "rose", "blue", "sky", "sea",
         "ice", "whale", "the", "is", "a", "and", "very", "big", "small"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def make_tiny_bert_preset(directory, seed=0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32,
    )
    os.makedirs(directory, exist_ok=True)
    backbone.save_to_preset(directory)
    tokenizer.save_to_preset(directory)
    return directory


def tiny_texts(num=24, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    warm, cold = WORDS[:5], WORDS[5:10]
    glue = WORDS[10:]
    texts, labels = [], []
    for i in range(num):
        label = i % 2
        words = list(rng.choice(cold if label else warm, 3)) + list(rng.choice(glue, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.asarray(labels, dtype="int32")
