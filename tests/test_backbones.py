"""The backbone registry and the spec contract: every registered family's block regexes.

Covers: transfer.backbones (registry, resolve, spec, blocks, families).
"""

import re

import keras
import pytest

import transfer
from transfer.backbones.blocks import assign_blocks
from transfer.backbones.blocks import infer_blocks

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent

APPLICATIONS = [
    name for name in transfer.list_backbones("image")
    if transfer.get_backbone_spec(name).source == "keras.applications"
]


def test_registry_has_the_promised_backbones():
    names = set(transfer.list_backbones())
    assert len(APPLICATIONS) >= 8
    assert {"mobilenet_v3_small", "efficientnet_b0", "resnet50_v2", "efficientnet_lite0"} <= names
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in names)


@pytest.mark.parametrize("name", [n for n in transfer.list_backbones("image") if n != "tiny_cnn"])
def test_spec_contract(name):
    """Every block regex matches a layer of the real architecture, in order."""
    spec = transfer.get_backbone_spec(name)
    size = max(spec.min_image_size, 32)
    if spec.patch_size:  # vision transformers: a multiple of the patch size
        size = -(-size // spec.patch_size) * spec.patch_size
    model, _, info = transfer.build_backbone(name, weights=None, image_size=size)
    assert info["weights"] is None
    assert model.name == name
    assignment = assign_blocks(model, spec.blocks)
    indices = [i for _, i in assignment]
    assert indices == sorted(indices), "blocks must follow layer order"
    assert set(indices) == set(range(len(spec.blocks)))
    # Every weighted layer is in some block, and the stem holds the first.
    weighted = [i for layer, i in assignment if layer.weights]
    assert weighted[0] == 0 and weighted[-1] == len(spec.blocks) - 1
    keras.backend.clear_session()


def test_unknown_backbone_suggests_names():
    with pytest.raises(ValueError, match="Did you mean 'efficientnet_b0'.*Received: backbone='efficientnet_b9'"):
        transfer.get_backbone_spec("efficientnet_b9")


def test_register_rejects_duplicates_and_bad_names():
    spec = transfer.get_backbone_spec("tiny_cnn")
    with pytest.raises(ValueError, match="already registered"):
        transfer.register_backbone(spec)
    with pytest.raises(ValueError, match="lowercase"):
        transfer.BackboneSpec(name="Bad/Name", source="x", builder=None, image_size=32)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")
def test_offline_imagenet_download_fails_fast_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(transfer.WeightsUnavailableError) as info:
        transfer.build_classifier("mobilenet_v3_small", 2, image_size=32)
    message = str(info.value)
    assert "mobilenet_v3_small" in message
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message
    assert "transfer.fetch_weights('mobilenet_v3_small')" in message
    assert "weights=None" in message


def test_infer_blocks_groups_by_name():
    model, _, _ = transfer.build_backbone("efficientnet_b0", weights=None, image_size=32)
    inferred = infer_blocks(model)
    assert [p.split("(")[0] for p in inferred][:3] == ["^stem", "^block1", "^block2"]
    assert inferred[-1].startswith("^top")
