"""Each EfficientNet-Lite variant's cached preset config names the variant
(KerasHub's timm converter needs `architecture: efficientnet_lite0` for
all of them), and a random-init build from it has the variant's shape.

Covers: transfer.weights.efficientnet_lite.write_config.
"""

import json
import os

import pytest

import transfer
from transfer.weights import efficientnet_lite as lite

pytestmark = pytest.mark.backend_independent


@pytest.mark.parametrize("name", sorted(lite.VARIANTS))
def test_cached_config_records_the_variant(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path))
    directory = lite.write_config(name)
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["transfer_variant"] == name
    assert config["pretrained_cfg"]["tag"].startswith(f"{name}.")
    size = lite.get_variant(name).image_size
    assert config["pretrained_cfg"]["input_size"] == [3, size, size]
    assert config["architecture"] == "efficientnet_lite0"


def test_variants_build_with_their_own_depth(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path))
    counts = [
        transfer.build_backbone(name, weights=None, image_size=32)[0]
        .count_params()
        for name in sorted(lite.VARIANTS)
    ]
    assert counts == sorted(counts) and len(set(counts)) == 3
