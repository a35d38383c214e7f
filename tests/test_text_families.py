"""Text encoder families on tiny random-init presets of the real KerasHub
classes (2 layers, width 16, a 17-word vocabulary): no weights, no network.

Covers: transfer.backbones.text_families, the family path of
transfer.backbones.text and transfer.models.text.

The family matrix runs on TensorFlow (`backend_independent`: the same
KerasHub layers on every backend, and TF graph tracing of seven encoders
is slow); RoBERTa runs on all three backends (`all_backends`).
"""


import keras
import numpy as np
import pytest
from tiny_bert import tiny_texts
from tiny_text_presets import EXPECTED_LAYERS
from tiny_text_presets import FAMILIES
from tiny_text_presets import TOP_EXTRAS
from tiny_text_presets import make_tiny_text_preset

import transfer
from transfer.backbones import text_families
from transfer.backbones.blocks import assign_blocks
from transfer.models import text

pytestmark = pytest.mark.backend_independent


@pytest.fixture(scope="session")
def tiny_text_preset(tmp_path_factory):
    """`tiny_text_preset(family)`: a local preset folder, built once."""
    made = {}

    def preset(family):
        if family not in made:
            folder = str(tmp_path_factory.mktemp(f"tiny_{family}"))
            made[family] = make_tiny_text_preset(family, folder)
        return made[family]

    return preset


def _family_param(family):
    marks = [pytest.mark.all_backends] if family == "roberta" else []
    return pytest.param(family, marks=marks, id=family)


ALL = [_family_param(f) for f in FAMILIES]


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _lora_layers(model):
    return [x for x in model.backbone._flatten_layers()
            if getattr(x, "lora_enabled", False)]


def test_every_family_has_a_tiny_preset():
    assert sorted(text_families.family_names()) == sorted(FAMILIES)


@pytest.mark.parametrize("family", ALL)
def test_layer_names_and_blocks_contract(family, tiny_text_preset):
    """Fails when KerasHub renames or reorders a family's layers."""
    preset = tiny_text_preset(family)
    spec = transfer.get_backbone_spec(preset, modality="text")
    # Resolved from the folder's config.json: exact blocks before building.
    assert f"({family})" in spec.description
    encoder, _, _, _ = text.build_text_backbone(preset, weights=None)
    names = [layer.name for layer in encoder.layers]
    assert names == EXPECTED_LAYERS[family]
    assert text_families.family_of(encoder).name == family
    blocks = text_families.family_blocks(encoder)
    assert blocks == spec.blocks and len(blocks) == 3
    index = dict((layer.name, i) for layer, i in assign_blocks(encoder, blocks))
    assert [index[n] for n in names] == sorted(index[n] for n in names)
    extras = TOP_EXTRAS.get(family, [])
    encoder_layers = names[len(names) - 2 - len(extras):len(names) - len(extras)]
    # Stem: everything before the first encoder layer; then one block per
    # encoder layer, the top one with the layers after it (pooled_dense).
    assert {index[n] for n in names[:names.index(encoder_layers[0])]} == {0}
    assert [index[n] for n in encoder_layers] == [1, 2]
    assert all(index[n] == 2 for n in extras)


@pytest.mark.parametrize("family", ALL)
def test_trainable_counts_per_block(family, tiny_text_preset):
    preset = tiny_text_preset(family)
    model = transfer.build_text_classifier(preset, 2, weights=None,
                                           sequence_length=16)
    assert model.transfer_metadata["family"] == family
    backbone = model.backbone
    # Independent counts: the head is every weight outside the backbone;
    # the top block is the last encoder layer (and the layers after it).
    head_count = _count(model.weights) - backbone.count_params()
    extras = TOP_EXTRAS.get(family, [])
    top_layers = [EXPECTED_LAYERS[family][-1 - len(extras)], *extras]
    top_count = sum(backbone.get_layer(n).count_params() for n in top_layers)
    assert 0 < head_count and 0 < top_count < backbone.count_params()

    assert transfer.set_trainable_blocks(model, 0).trainable_params == (
        head_count)
    assert transfer.set_trainable_blocks(model, 1).trainable_params == (
        head_count + top_count)
    assert transfer.set_trainable_blocks(model, "all").trainable_params == (
        backbone.count_params() + head_count)
    with pytest.raises(ValueError, match="The backbone has 3 blocks"):
        transfer.set_trainable_blocks(model, 4)


@pytest.mark.parametrize("family", ALL)
def test_lora_fit_then_reload(family, tiny_text_preset, tmp_path):
    """One optimizer step with LoRA: the base weights stay, the adapters
    move, and the saved model reloads with its family, blocks and the same
    outputs.

    One eager step and a `save_model` round trip per family: the same LoRA
    layers, weights and reload as a `fit_recipe` run, without TF tracing
    each encoder's train and predict functions (a `fit_recipe` run took
    15-117 s per family under load). `fit_recipe` with LoRA, its run
    directory and the family in the reloaded metadata are tested on BERT
    in test_text.py, on every backend."""
    preset = tiny_text_preset(family)
    model = transfer.build_text_classifier(
        preset, 2, weights=None, sequence_length=16, lora_rank=2)
    lora = _lora_layers(model)
    assert len(lora) >= 4  # query and value of 2 layers (ALBERT: 2 groups)
    plan = transfer.set_trainable_blocks(model, "all")
    # What trains in the backbone: the adapters, and the biases of the
    # adapted projections (Keras's LoRA freezes the kernel only).
    lora_paths = {w.path for x in lora for w in x.trainable_weights}
    backbone_trainable = {w.path for w in model.backbone.trainable_weights}
    assert backbone_trainable == lora_paths
    assert all(p.endswith(("lora_kernel_a", "lora_kernel_b", "bias"))
               for p in backbone_trainable)
    assert 0 < plan.trainable_share < 0.5
    base = [keras.ops.convert_to_numpy(x._kernel) for x in lora]
    adapters = [keras.ops.convert_to_numpy(x.lora_kernel_b) for x in lora]
    x, y = tiny_texts(16)
    # Eager on TF and torch; JAX op by op took 118 s here, jitted it is fast.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=keras.config.backend() != "jax")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "lora.keras")
    transfer.save_model(model, path)
    for before, layer in zip(base, lora, strict=True):
        np.testing.assert_array_equal(
            before, keras.ops.convert_to_numpy(layer._kernel))
    assert any(not np.array_equal(a, keras.ops.convert_to_numpy(x.lora_kernel_b))
               for a, x in zip(adapters, lora, strict=True))
    reloaded = transfer.load_model(path)
    assert text_families.family_of(reloaded.backbone).name == family
    # Exact blocks after reloading too: found by the backbone's class.
    assert text_families.family_blocks(reloaded.backbone) == (
        text_families.family_blocks(model.backbone))
    # Eager calls on the same tokens: no predict function to trace.
    tokens = model.preprocessor(x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(tokens, training=False)),
        keras.ops.convert_to_numpy(model(tokens, training=False)), atol=1e-5)


def test_hub_names_resolve_to_families_offline():
    for preset, family in (("roberta_base_en", "roberta"),
                           ("deberta_v3_small_en", "deberta_v3"),
                           ("distil_bert_base_en_uncased", "distil_bert"),
                           ("electra_small_discriminator_uncased_en",
                            "electra"),
                           ("xlm_roberta_base_multi", "xlm_roberta")):
        found, depth, _ = text_families.preset_family(preset)
        assert found is not None and found.name == family, preset
        assert depth is None  # known once built
        spec = transfer.get_backbone_spec(f"hub:{preset}", modality="text")
        assert spec.name == f"hub_{preset}"


def test_image_preset_folder_is_refused_for_text(tmp_path):
    folder = tmp_path / "resnet_preset"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"class_name": "ResNetBackbone", "config": {}}')
    with pytest.raises(ValueError, match="ResNetBackbone without a tokenizer"
                       ".*Received: backbone="):
        transfer.get_backbone_spec(str(folder), modality="text")
