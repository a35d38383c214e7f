"""Vision transformer families (ViT, DeiT, DINOv2, DINOv3, SigLIP, CLIP).

Each family's real KerasHub class, in a small random-init configuration
(2 layers, width 16, 32 px, patch 8), is saved once per session as a local
preset folder and wrapped with `build_classifier`. No real weights: those
need a download.

Suite time: each family's classifier and KerasHub original are built once
per module (`built`) for the checks that only read them, and predictions
are eager calls (tracing `predict` costs more than a few images). The
`fit_recipe` runs (two 1-epoch stages and one LoRA stage per
family) are most of the file's time: tracing each training step.

Covers: transfer.backbones.vision_transformers, transfer.models.pooling,
build_classifier(pooling=, lora_rank=, drop_path=).
"""

import os

import keras
import numpy as np
import pytest

import transfer
from transfer.backbones import vision_transformers
from transfer.backbones.blocks import assign_blocks
from transfer.backbones.blocks import infer_blocks
from transfer.models.freeze import backbone_blocks

FAMILIES = ("vit", "deit", "dinov2", "dinov3", "siglip", "clip")
# JAX compiles each family's training step anew (10-20 s each on 2 CPU
# cores): there, training runs for the class-token ViT and for SigLIP's
# attention-pooling head; TensorFlow and torch train every family.
JAX_TRAINED = ("vit", "siglip")
TRAINED = [
    pytest.param(family, marks=pytest.mark.skipif(
        keras.backend.backend() == "jax" and family not in JAX_TRAINED,
        reason="JAX trains vit and siglip only (suite time)"))
    for family in FAMILIES
]
SIZE, PATCH, WIDTH, LAYERS = 32, 8, 16, 2
SMALL = {"num_layers": LAYERS, "num_heads": 2, "hidden_dim": WIDTH}

# The contract: the direct layer names of each re-wired backbone, as a saved
# preset reloads them (DINOv2, SigLIP and CLIP prefix them with the model's
# name). It fails when KerasHub renames a layer the block regexes rely on.
PREFIX = {"dinov2": "dinov2_backbone_", "dinov3": "dinov3_backbone_",
          "siglip": "sig_lip_vision_encoder_",
          "clip": "clip_vision_encoder_"}
EXPECTED_NAMES = {
    "vit": ["images", "vit_patching_and_embedding", "dropout",
            "transformer_block_1", "transformer_block_2", "ln"],
    "deit": ["images", "deit_patching_and_embedding", "transformer_block_1",
             "transformer_block_2", "ln"],
    # A saved DINOv2 preset's name prefixes its top-level layers.
    "dinov2": ["images", "dinov2_backbone_embeddings", "layers_0",
               "layers_1", "dinov2_backbone_layernorm"],
    "dinov3": ["images", "dinov3_backbone_embeddings",
               "dinov3_backbone_rope_embedding", "layers_0", "layers_1",
               "dinov3_backbone_layernorm"],
    "siglip": ["images"] + [f"sig_lip_vision_encoder_{n}" for n in (
        "embedding", "encoder_block_0", "encoder_block_1", "post_layer_norm",
        "head")],
    "clip": ["images"] + [f"clip_vision_encoder_{n}" for n in (
        "embedding", "pre_layer_norm", "encoder_block_0", "encoder_block_1",
        "layer_norm")],
}
# Tokens before the patch tokens: class, distillation, registers.
PREFIX_TOKENS = {"vit": 1, "deit": 2, "dinov2": 3, "dinov3": 3, "siglip": 0,
                 "clip": 1}


def _small_backbone(family):
    import keras_hub

    models, shape = keras_hub.models, (SIZE, SIZE, 3)
    if family == "vit":
        return models.ViTBackbone(image_shape=shape, patch_size=PATCH,
                                  mlp_dim=32, **SMALL)
    if family == "deit":
        return models.DeiTBackbone(image_shape=shape, patch_size=PATCH,
                                   intermediate_dim=32, **SMALL)
    if family == "dinov2":
        return models.DINOV2Backbone(
            patch_size=PATCH, intermediate_dim=32, image_shape=shape,
            position_embedding_shape=shape, num_register_tokens=2, **SMALL)
    if family == "dinov3":
        return models.DINOV3Backbone(
            patch_size=PATCH, intermediate_dim=32, image_shape=shape,
            num_register_tokens=2, **SMALL)
    cls = (models.SigLIPVisionEncoder if family == "siglip"
           else models.CLIPVisionEncoder)
    return cls(patch_size=PATCH, intermediate_dim=32, image_shape=shape,
               **SMALL)


def _converter(family):
    import keras_hub

    cls = {
        "vit": keras_hub.layers.ViTImageConverter,
        "deit": keras_hub.layers.DeiTImageConverter,
        "dinov2": keras_hub.layers.DINOV2ImageConverter,
        "dinov3": keras_hub.layers.DINOV3ImageConverter,
        "siglip": keras_hub.layers.SigLIPImageConverter,
        "clip": keras_hub.layers.CLIPImageConverter,
    }[family]
    if family in ("deit", "dinov2", "dinov3"):  # ImageNet mean and std
        std = np.array([0.229, 0.224, 0.225])
        return cls(image_size=(SIZE, SIZE), scale=list(1 / (255 * std)),
                   offset=list(-np.array([0.485, 0.456, 0.406]) / std),
                   interpolation="bicubic")
    return cls(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)


@pytest.fixture(scope="session")
def presets(tmp_path_factory):
    """Each family's small random-init configuration as a preset folder."""
    root = tmp_path_factory.mktemp("vit_presets")
    folders = {}
    for family in FAMILIES:
        folder = str(root / f"tiny_{family}")
        _small_backbone(family).save_to_preset(folder)
        _converter(family).save_to_preset(folder)
        folders[family] = folder
    keras.backend.clear_session()
    return folders


def _data(n=8, seed=0):
    return transfer.synthetic_images(num_samples=n, image_size=SIZE,
                                     num_classes=2, seed=seed)


def _values(weights):
    return [keras.ops.convert_to_numpy(w).copy() for w in weights]


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _backbone(model):
    return model.get_layer(model.transfer_metadata["backbone"])


def _outputs(model, x):
    """The model's inference outputs, called eagerly: tracing `predict`
    costs more than these few images."""
    return keras.ops.convert_to_numpy(model(np.asarray(x, "float32")))


@pytest.fixture(scope="module")
def built(presets):
    """`built(family)`: the family's classifier (3 classes, default pooling,
    random init) and its KerasHub backbone as the preset loads it, each
    built once, for the checks that read them (and set trainable flags)."""
    import keras_hub

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = (
                transfer.build_classifier(presets[family], 3, weights=None),
                keras_hub.models.Backbone.from_preset(presets[family]),
            )
        return cache[family]

    return get


@pytest.mark.backend_independent
@pytest.mark.parametrize("family", FAMILIES)
def test_block_regexes_match_the_real_layer_names_in_order(presets, built,
                                                           family):
    backbone = _backbone(built(family)[0])
    assert [layer.name for layer in backbone.layers] == EXPECTED_NAMES[family]
    spec = transfer.get_backbone_spec(presets[family])
    # The folder's spec, the names of a reloaded model, and the registered
    # family (its default preset, 12 layers) all give the same regexes.
    assert spec.blocks == infer_blocks(backbone) == backbone_blocks(backbone)
    assert len(spec.blocks) == 1 + LAYERS + 1
    indices = [i for _, i in assign_blocks(backbone, spec.blocks)]
    assert indices == sorted(indices)
    assert set(indices) == set(range(len(spec.blocks)))
    prefix = PREFIX.get(family, "")
    assert vision_transformers.layer_names(family, LAYERS, prefix=prefix) == (
        EXPECTED_NAMES[family]
    )
    registered = transfer.get_backbone_spec(family)
    assert registered.blocks == vision_transformers.family_blocks(family, 12)
    assert registered.blocks[-1] == spec.blocks[-1]
    assert spec.pooling == registered.pooling


@pytest.mark.backend_independent
@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_comes_from_the_image_converter(presets, family):
    spec = transfer.get_backbone_spec(presets[family])
    assert (spec.image_size, spec.patch_size) == (SIZE, PATCH)
    if family in ("deit", "dinov2", "dinov3"):
        np.testing.assert_allclose(spec.scale, 1 / (255 * np.array(
            [0.229, 0.224, 0.225])))
        assert spec.interpolation == "bicubic"
    else:
        assert (spec.scale, spec.offset) == (1 / 127.5, -1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_rewired_backbone_equals_the_keras_hub_backbone(presets, built,
                                                       family):
    original = built(family)[1]
    flat, _, _ = transfer.build_backbone(presets[family], weights="preset")
    x = _data(2)[0] / 255.0
    expected = _outputs(original, x)
    got = _outputs(flat, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The same layer objects: no weight was copied or left out.
    assert _count(flat.weights) == original.count_params()


@pytest.mark.parametrize("family", FAMILIES)
def test_trainable_counts_equal_an_independent_count(built, family):
    model, original = built(family)
    head = WIDTH * 3 + 3
    assert model.get_layer("pooler").count_params() == 0
    top = 2 * WIDTH  # the final LayerNorm: gamma and beta
    if family == "siglip":  # and the attention-pooling head with it
        top += original.layers[-1].count_params()
    # Position ids are non-trainable variables in some families.
    expected = {0: head, 1: head + top,
                "all": head + _count(original.trainable_weights)}
    for blocks, count in expected.items():
        plan = transfer.set_trainable_blocks(model, blocks)
        assert plan.trainable_params == count
        assert _count(model.trainable_weights) == count
        assert plan.trainable_params + plan.non_trainable_params == (
            head + original.count_params())


@pytest.mark.parametrize("family", TRAINED)
def test_two_stage_recipe_freezes_trains_and_reloads(presets, family,
                                                     tmp_path):
    model = transfer.build_classifier(presets[family], 2, weights=None,
                                      dropout=0.0)
    backbone = _backbone(model)
    data = _data()
    before = _values(backbone.weights)
    head_before = _values(model.get_layer("predictions").weights)
    transfer.fit_recipe(model, [transfer.Stage("head", 1, 1e-2, 0)], data,
                        run_dir=str(tmp_path / "s1"), batch_size=4, verbose=0)
    for old, new in zip(before, _values(backbone.weights), strict=True):
        np.testing.assert_array_equal(old, new)
    assert any(not np.array_equal(a, b) for a, b in zip(
        head_before, _values(model.get_layer("predictions").weights),
        strict=True))
    # Stage 2: the last encoder layer and the final norm (or SigLIP's head)
    # with per-block rates; the stem and first layer stay frozen.
    stage = transfer.Stage("top", 1, 1e-2, 2, layer_decay=0.8)
    transfer.fit_recipe(model, [stage], data, run_dir=str(tmp_path / "s2"),
                        batch_size=4, verbose=0)
    frozen = [layer for layer, i in assign_blocks(
        backbone, backbone_blocks(backbone)) if i < len(
            backbone_blocks(backbone)) - 2]
    for layer in frozen:
        assert not layer.trainable_weights
    assert any(not np.array_equal(a, b) for a, b in zip(
        before, _values(backbone.weights), strict=True))
    frozen_ids = {id(w) for layer in frozen for w in layer.weights}
    for w, old in zip(backbone.weights, before, strict=True):
        if id(w) in frozen_ids:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), old)
    path = os.path.join(tmp_path, "s2", "model.keras")
    reloaded = transfer.load_model(path)
    x = data[0][:4]
    np.testing.assert_allclose(_outputs(reloaded, x), _outputs(model, x),
                               atol=1e-5)
    flags = [x.trainable for x in _backbone(reloaded).layers if x.weights]
    assert flags == [x.trainable for x in backbone.layers if x.weights]


def _lora_layers(model):
    return [x for x in _backbone(model)._flatten_layers()
            if getattr(x, "lora_enabled", False)]


@pytest.mark.parametrize("family", TRAINED)
def test_lora_trains_only_adapters_and_head(presets, family, tmp_path):
    model = transfer.build_classifier(presets[family], 2, weights=None,
                                      dropout=0.0, lora_rank=2)
    assert model.transfer_metadata["lora_rank"] == 2
    lora = _lora_layers(model)
    assert len(lora) == 3 * LAYERS  # query, key and value of each layer
    plan = transfer.set_trainable_blocks(model, "all")
    adapters = {id(w) for x in lora for w in (x.lora_kernel_a,
                                              x.lora_kernel_b)}
    # KerasHub's enable_lora leaves the projections' biases trainable.
    biases = {id(x.bias) for x in lora if x.bias is not None}
    head = {id(w) for w in model.get_layer("predictions").weights}
    trainable = {id(w) for w in model.trainable_weights}
    assert adapters <= trainable and head <= trainable
    assert trainable <= adapters | biases | head
    assert 0 < plan.trainable_share < 0.3
    backbone = _backbone(model)
    before = {id(w): keras.ops.convert_to_numpy(w).copy()
              for w in backbone.weights}
    transfer.fit_recipe(model, [transfer.Stage("lora", 1, 1e-2, "all")],
                        _data(), run_dir=str(tmp_path / "lora"), batch_size=4,
                        verbose=0)
    changed = {id(w) for w in backbone.weights if not np.array_equal(
        before[id(w)], keras.ops.convert_to_numpy(w))}
    assert changed and changed <= adapters | biases
    reloaded = transfer.load_model(str(tmp_path / "lora" / "model.keras"))
    x = _data(4)[0]
    np.testing.assert_allclose(_outputs(reloaded, x), _outputs(model, x),
                               atol=1e-5)


@pytest.mark.backend_independent
@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_choices(presets, built, family):
    spec = transfer.get_backbone_spec(presets[family])
    default = built(family)[0]
    for pooling in spec.pooling:
        model = default if pooling == spec.pooling[0] else (
            transfer.build_classifier(presets[family], 2, weights=None,
                                      pooling=pooling))
        pooler = model.get_layer("pooler")
        assert pooler.output.shape == (None, WIDTH)
        if pooling in ("token", "avg"):
            assert pooler.num_prefix_tokens == PREFIX_TOKENS[family]
    assert default.transfer_metadata["pooling"] == spec.pooling[0]
    with pytest.raises(ValueError, match=r"offers pooling .*Received: "
                                         r"pooling='max'"):
        transfer.build_classifier(presets[family], 2, pooling="max")


@pytest.mark.backend_independent
def test_token_pooling_layer_round_trip():
    layer = transfer.models.pooling.TokenPooling("avg", num_prefix_tokens=2)
    again = type(layer).from_config(layer.get_config())
    assert (again.mode, again.num_prefix_tokens) == ("avg", 2)
    tokens = np.arange(24, dtype="float32").reshape(2, 4, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(tokens)),
                               tokens[:, 2:].mean(axis=1))


@pytest.mark.backend_independent
def test_drop_path_for_dinov2_and_dinov3_only(presets):
    for family in ("dinov3", "dinov2"):
        model = transfer.build_classifier(presets[family], 2, weights=None,
                                          drop_path=0.1)
        rates = [x.rate for x in _backbone(model)._flatten_layers()
                 if type(x).__name__.endswith("DropPath")]
        # DINOv2 uses the rate in every layer; DINOv3 ramps it up linearly
        # over the depth (0 in the first layer: no DropPath layer there).
        expected = [0.1] * LAYERS if family == "dinov2" else [0.1]
        np.testing.assert_allclose(rates, expected, err_msg=family)
    x = _data(2)[0]
    np.testing.assert_allclose(_outputs(model, x), _outputs(model, x))
    with pytest.raises(ValueError, match=r"drop_path works with \['dinov2', 'dinov3'\]"
                                         r".*Received: drop_path=0.1"):
        transfer.build_classifier(presets["vit"], 2, drop_path=0.1)
    with pytest.raises(ValueError, match="Received: drop_path=1.5"):
        transfer.build_classifier(presets["dinov2"], 2, drop_path=1.5)


@pytest.mark.backend_independent
def test_bad_input_is_refused_before_training(presets, tmp_path):
    vit = presets["vit"]
    with pytest.raises(ValueError, match="multiple of 8.*Received: "
                                         "image_size=36"):
        transfer.build_classifier(vit, 2, weights=None, image_size=36)
    with pytest.raises(ValueError, match="at least 8.*Received: image_size=4"):
        transfer.build_classifier(vit, 2, weights=None, image_size=4)
    with pytest.raises(ValueError, match="has no attention layers.*'vit'.*"
                                         "Received: lora_rank=2"):
        transfer.build_classifier("tiny_cnn", 2, weights=None, lora_rank=2)
    with pytest.raises(ValueError, match="Received: lora_rank=0"):
        transfer.build_classifier(vit, 2, weights=None, lora_rank=0)
    model = transfer.build_classifier(vit, 2, weights=None)
    with pytest.raises(ValueError, match="has 4 blocks.*Received: "
                                         "trainable_blocks=5"):
        transfer.set_trainable_blocks(model, 5)
    # Pretrained ViT position embeddings are not interpolated.
    with pytest.raises(ValueError, match="trained at 32 px.*Received: "
                                         "image_size=48"):
        transfer.build_classifier(vit, 2, weights="preset", image_size=48)
    # A stage deeper than the encoder: refused before stage 1 trains.
    recipe = [transfer.Stage("head", 1, 1e-3, 0),
              transfer.Stage("deep", 1, 1e-3, 5)]
    with pytest.raises(ValueError, match="Stage 'deep': The backbone has 4 "
                                         "blocks.*Received: "
                                         "trainable_blocks=5"):
        transfer.fit_recipe(model, recipe, _data(4),
                            run_dir=str(tmp_path / "deep"), verbose=0)
    assert not (tmp_path / "deep").exists()


@pytest.mark.backend_independent
def test_preset_of_the_other_modality_is_refused(presets, tmp_path):
    from tiny_bert import make_tiny_bert_preset

    from transfer.models import text

    bert = make_tiny_bert_preset(str(tmp_path / "tiny_bert"))
    with pytest.raises(ValueError, match=r"holds a text encoder "
                       r"\(BertBackbone\), not an image backbone.*"
                       r"build_text_classifier.*Received: backbone="):
        transfer.build_classifier(bert, 2, weights=None)
    # A KerasHub text preset name: known offline, nothing downloaded.
    with pytest.raises(ValueError, match="'roberta_base_en' is a text "
                                         "encoder.*Received: backbone="
                                         "'hub:roberta_base_en'"):
        transfer.build_classifier("hub:roberta_base_en", 2, weights=None)
    with pytest.raises(ValueError, match="holds a ViTBackbone without a "
                                         "tokenizer.*not a text preset"):
        text.build_text_classifier(presets["vit"], 2, weights=None)


@pytest.mark.backend_independent
def test_other_sizes_and_registered_families(presets):
    # DINOv2 interpolates its position embeddings: other sizes keep weights.
    model = transfer.build_classifier(presets["dinov2"], 2, weights="preset",
                                      image_size=48)
    assert _backbone(model).output_shape == (None, 3 + 36, WIDTH)
    assert set(FAMILIES) <= set(transfer.list_backbones("image"))
    assert transfer.get_backbone_spec("siglip").pooling == ("map", "avg")
    assert transfer.get_backbone_spec("small_cnn").pooling == ("avg", "max")


@pytest.mark.backend_independent
def test_resume_compares_pooling_lora_and_drop_path(presets):
    from transfer.training import fingerprint

    def model_print(*args, **kwargs):
        model = transfer.build_classifier(*args, 2, weights=None, **kwargs)
        return fingerprint.run_fingerprint(
            model, transfer.Recipe((transfer.Stage("head", 1, 1e-3),)),
            _data(2), None, batch_size=2, class_names=None)[1]["model"]

    token = model_print(presets["dinov2"])
    assert token["build_options"] == {"pooling": "token"}
    others = [model_print(presets["dinov2"], pooling="avg"),
              model_print(presets["dinov2"], lora_rank=2),
              model_print(presets["dinov2"], drop_path=0.1)]
    assert others[2]["build_options"] == {"pooling": "token",
                                          "drop_path": 0.1}
    assert all(other != token for other in others)
    # CNNs with the default pooling record none: their older runs resume.
    assert "build_options" not in model_print("tiny_cnn")
