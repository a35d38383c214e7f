"""Masked image pretraining (`pretrain_images(..., method="mae")`).

A tiny random-init ViT (KerasHub's `ViTBackbone`: 16 px, patch 4, 2 layers,
width 16) registered as `tiny_vit` for this module; 16 patches, 4 visible.

Covers: transfer.pretraining (masked_images, reconstructions, images),
transfer.backbones (small: small_vit; local: `.keras` vision transformers).
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

import transfer
from transfer.backbones import vision_transformers
from transfer.pretraining import masked_images
from transfer.pretraining.masked_images import MaskedImagePretrainer

SIZE, PATCH = 16, 4
PATCHES = (SIZE // PATCH) ** 2


def _tiny_vit(weights, input_shape, pooling=None):
    import keras_hub

    vision = keras_hub.models.ViTBackbone(
        image_shape=tuple(input_shape), patch_size=PATCH, num_layers=2,
        num_heads=2, hidden_dim=16, mlp_dim=32)
    model = vision_transformers.flatten("vit", vision, tuple(input_shape))
    if weights is not None:
        model.load_weights(weights)
    return model, {"weights": weights, "source": "tests", "prefix_tokens": 1}


@pytest.fixture(scope="module", autouse=True)
def tiny_vit():
    spec = dataclasses.replace(
        transfer.get_backbone_spec("small_vit"), name="tiny_vit",
        builder=_tiny_vit, image_size=SIZE,
        blocks=vision_transformers.family_blocks("vit", 2))
    transfer.register_backbone(spec, override=True)
    return spec


def _images(n=16, seed=0):
    return transfer.synthetic_images(num_samples=n, image_size=SIZE,
                                     num_classes=2, seed=seed)


def _pretrainer(**kwargs):
    backbone, spec, info = transfer.build_backbone(
        "tiny_vit", weights=None, image_size=SIZE)
    model = MaskedImagePretrainer(
        backbone, SIZE, PATCH, num_prefix_tokens=info["prefix_tokens"],
        scale=spec.scale, offset=spec.offset, decoder_dim=16,
        decoder_heads=2, **kwargs)
    model(_images(2)[0])
    return model


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _tensor_steps(run):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(run)
    accumulator.Reload()
    return {tag: sorted(e.step for e in accumulator.Tensors(tag))
            for tag in accumulator.Tags()["tensors"]}


def test_mae_pretrain_then_build_classifier(tmp_path):
    x, y = _images()
    run_dir = str(tmp_path / "mae")
    result = transfer.pretrain_images(
        x, run_dir=run_dir, backbone="tiny_vit", method="mae", epochs=1,
        batch_size=8, holdout=(x, y))
    loss = result["history"].history["loss"]
    assert len(loss) == 1 and np.isfinite(loss[0]) and loss[0] > 0
    assert "accuracy" not in result["history"].history
    assert [epoch for epoch, _ in result["probe"]] == [-1, 0]
    logs = os.path.join(run_dir, "logs")
    assert _tensor_steps(os.path.join(logs, "train"))["epoch_loss"] == [0]
    assert _tensor_steps(os.path.join(logs, "reconstructions")) == {
        "reconstructions": [0]}
    with open(os.path.join(run_dir, "manifest.json")) as f:
        assert json.load(f)["task"] == "mae"
    # The saved backbone fine-tunes like a registered ViT: its blocks and
    # preprocessing, class-token pooling, the pretrained weights.
    classifier = transfer.build_classifier(result["backbone"], 2)
    assert classifier.get_layer("pooler").num_prefix_tokens == 1
    assert classifier.transfer_metadata["pooling"] == "token"
    loaded = classifier.get_layer("tiny_vit")
    for a, b in zip(loaded.weights, result["model"].backbone.weights,
                    strict=True):
        np.testing.assert_allclose(_numpy(a), _numpy(b))
    assert classifier(x[:2]).shape == (2, 2)


@pytest.mark.backend_independent
def test_encoder_sees_only_the_visible_patches_and_loss_counts_hidden_ones():
    model = _pretrainer()
    x = _images(2)[0].astype("float32")
    noise = np.random.default_rng(1).uniform(size=(2, PATCHES))
    noise = noise.astype("float32")
    out = model.masked_forward(x, noise)
    mask = _numpy(out["mask"])
    assert out["pixels"].shape == (2, PATCHES, PATCH * PATCH * 3)
    np.testing.assert_array_equal(mask.sum(axis=1), [12, 12])
    # The 4 patches with the lowest noise are the visible ones.
    visible = np.argsort(noise, axis=1)[:, :4]
    assert all(mask[i, visible[i]].sum() == 0 for i in range(2))
    # Changing the hidden patches' pixels changes no prediction.
    hidden_changed = masked_images.unpatchify(np.where(
        mask[..., None] > 0, 255.0,
        _numpy(masked_images.patchify(x, PATCH))), PATCH)
    again = model.masked_forward(hidden_changed, noise)
    np.testing.assert_allclose(_numpy(again["pixels"]), _numpy(out["pixels"]),
                               atol=1e-5)
    # Predictions for visible patches do not count in the loss.
    loss = float(model.compute_loss(x, y_pred=out))
    pixels = np.where(mask[..., None] > 0, _numpy(out["pixels"]), 100.0)
    other = dict(out, pixels=pixels.astype("float32"))
    assert float(model.compute_loss(x, y_pred=other)) == pytest.approx(
        loss, rel=1e-5)
    # A perfect reconstruction of the hidden patches has zero loss.
    targets, _, _ = masked_images.normalized_patches(x, PATCH)
    np.testing.assert_allclose(_numpy(targets), _numpy(out["targets"]))
    perfect = dict(out, pixels=targets)
    assert float(model.compute_loss(x, y_pred=perfect)) < 1e-6
    # The masked view and reconstruction keep the visible pixels.
    masked, rebuilt = model.reconstruct(x[:2], seed=3)
    assert masked.shape == rebuilt.shape == (2, SIZE, SIZE, 3)
    kept = np.all(masked == np.round(x), axis=-1)
    assert 0 < kept.mean() < 0.5
    np.testing.assert_array_equal(rebuilt[kept], masked[kept])


@pytest.mark.backend_independent
def test_patchify_round_trip_in_token_order():
    x = np.arange(2 * 8 * 8 * 3, dtype="float32").reshape(2, 8, 8, 3)
    patches = _numpy(masked_images.patchify(x, 4))
    assert patches.shape == (2, 4, 48)
    # Patch 1 is the top right one (row by row, as a ViT's tokens).
    np.testing.assert_array_equal(patches[0, 1].reshape(4, 4, 3),
                                  x[0, :4, 4:])
    np.testing.assert_array_equal(masked_images.unpatchify(patches, 4), x)


@pytest.mark.backend_independent
def test_pretrainer_saves_and_reloads(tmp_path):
    model = _pretrainer(mask_ratio=0.5, seed=3)
    path = str(tmp_path / "mae.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, MaskedImagePretrainer)
    config = reloaded.get_config()
    assert (config["mask_ratio"], config["seed"]) == (0.5, 3)
    assert reloaded.num_visible == PATCHES // 2
    x = _images(4)[0]
    np.testing.assert_allclose(_numpy(reloaded.features(x)),
                               _numpy(model.features(x)), atol=1e-5)
    noise = np.random.default_rng(0).uniform(size=(4, PATCHES))
    np.testing.assert_allclose(
        _numpy(reloaded.masked_forward(x, noise.astype("float32"))["pixels"]),
        _numpy(model.masked_forward(x, noise.astype("float32"))["pixels"]),
        atol=1e-5)


@pytest.mark.backend_independent
def test_bad_input_is_refused_before_training(tmp_path):
    x, _ = _images()
    run = str(tmp_path / "r")

    def refused(match, **kwargs):
        arguments = dict(run_dir=run, backbone="tiny_vit", method="mae",
                         batch_size=8)
        arguments.update(kwargs)
        images = arguments.pop("images", x)
        with pytest.raises(ValueError, match=match):
            transfer.pretrain_images(images, **arguments)
        assert not os.path.exists(run)

    for ratio in (0, 1, 1.5, True):
        refused(rf"strictly between 0 and 1.*Received: mask_ratio={ratio}",
                mask_ratio=ratio)
    refused(r"multiple of 4 and at least 8 \(for example image_size=16\)"
            r".*Received: image_size=18", image_size=18)
    refused(r"needs a vision transformer.*'tiny_cnn' has no patches.*"
            r"method='simclr'.*Received: backbone='tiny_cnn'",
            backbone="tiny_cnn")
    refused(r"Only 16 unlabelled images for batch_size=32: MAE needs",
            batch_size=32)
    refused(r"`method` must be one of.*Received: method='mim'", method="mim")
    # A transformer whose layers do not form one chain (DINOv3's rotary
    # positions): refused when built, before training.
    inputs = keras.Input((SIZE, SIZE, 3))
    side = keras.layers.Dense(4, name="side")(inputs)
    tokens = keras.layers.Reshape((SIZE * SIZE, 4))(
        keras.layers.Add()([keras.layers.Dense(4)(inputs), side]))
    branched = keras.Model(inputs, tokens, name="branched")
    with pytest.raises(ValueError, match="must form one chain.*Received: "
                                         "backbone='branched'"):
        masked_images.split_backbone(branched)


@pytest.mark.backend_independent
def test_small_vit_is_random_init_only():
    spec = transfer.get_backbone_spec("small_vit")
    assert (spec.image_size, spec.patch_size, spec.weights) == (32, 4, ())
    with pytest.raises(ValueError, match="'small_vit' has no ImageNet "
                                         "weights.*Received: weights="):
        transfer.build_backbone("small_vit", weights="imagenet")
    backbone, _, info = transfer.build_backbone("small_vit", weights=None)
    assert backbone.output_shape == (None, 1 + 64, 64)
    assert info["source"] == "random init" and info["prefix_tokens"] == 1
    stem, encoder = masked_images.split_backbone(backbone, spec.blocks)
    assert [layer.name for layer in stem] == [
        "vit_patching_and_embedding", "dropout"]
    assert [layer.name for layer in encoder][-1] == "ln"
    assert len(encoder) == 4 + 1


@pytest.mark.backend_independent
def test_simclr_pools_a_vision_transformers_patch_tokens():
    from transfer.pretraining.contrastive import ContrastivePretrainer

    backbone, spec, info = transfer.build_backbone(
        "tiny_vit", weights=None, image_size=SIZE)
    model = ContrastivePretrainer(backbone, [], scale=spec.scale,
                                  offset=spec.offset, projection_dim=8,
                                  num_prefix_tokens=info["prefix_tokens"])
    x = _images(4)[0]
    assert model(x).shape == (4, 2, 8)
    tokens = _numpy(backbone(model.preprocessing(x.astype("float32"))))
    np.testing.assert_allclose(_numpy(model.features(x)),
                               tokens[:, 1:].mean(axis=1), atol=1e-5)
    again = ContrastivePretrainer.from_config(model.get_config())
    assert again.pooler.num_prefix_tokens == 1
    classifier = transfer.build_classifier("small_vit", 3, weights=None,
                                           pooling="avg")
    assert classifier.get_layer("pooler").num_prefix_tokens == 1


class _Kill(Exception):
    pass


@pytest.mark.requires_backend("tensorflow")
def test_killed_mae_run_resumes(tmp_path, monkeypatch):
    from transfer.pretraining.reconstructions import ReconstructionLogger

    x, _ = _images()
    run_dir = str(tmp_path / "mae")
    original = ReconstructionLogger.on_epoch_end

    def die_after_epoch_0(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise _Kill()

    monkeypatch.setattr(ReconstructionLogger, "on_epoch_end",
                        die_after_epoch_0)
    arguments = dict(run_dir=run_dir, backbone="tiny_vit", method="mae",
                     epochs=2, batch_size=8, mask_ratio=0.5)
    with pytest.raises(_Kill):
        transfer.pretrain_images(x, **arguments)
    monkeypatch.setattr(ReconstructionLogger, "on_epoch_end", original)
    result = transfer.pretrain_images(x, **arguments)
    assert result["history"].epoch == [0, 1]
    assert result["model"].num_visible == PATCHES // 2
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["stages"][0]["resumed_after_epoch"] == 0
    assert manifest["stages"][0]["name"] == "mae"
    steps = _tensor_steps(os.path.join(run_dir, "logs", "reconstructions"))
    assert steps == {"reconstructions": [0, 1]}


def _family_backbone(family):
    import keras_hub

    models, shape = keras_hub.models, (SIZE, SIZE, 3)
    small = {"num_layers": 2, "num_heads": 2, "hidden_dim": 16,
             "intermediate_dim": 32, "patch_size": PATCH, "image_shape": shape}
    if family == "deit":
        vision = models.DeiTBackbone(**small)
    elif family == "dinov2":
        vision = models.DINOV2Backbone(position_embedding_shape=shape,
                                       num_register_tokens=2, **small)
    else:
        vision = models.CLIPVisionEncoder(**small)
    flat = vision_transformers.flatten(family, vision, shape)
    return flat, vision_transformers.prefix_tokens(family, vision.get_config())


@pytest.mark.backend_independent
@pytest.mark.parametrize("family", ["deit", "dinov2", "clip"])
def test_other_families_encode_the_visible_patches_only(family):
    backbone, prefix = _family_backbone(family)
    model = MaskedImagePretrainer(backbone, SIZE, PATCH,
                                  num_prefix_tokens=prefix, decoder_dim=16,
                                  decoder_heads=2)
    x = _images(2)[0].astype("float32")
    model(x)  # builds the decoder
    noise = np.random.default_rng(1).uniform(size=(2, PATCHES))
    out = model.masked_forward(x, noise.astype("float32"))
    mask = _numpy(out["mask"])
    assert out["pixels"].shape == (2, PATCHES, PATCH * PATCH * 3)
    hidden_changed = masked_images.unpatchify(np.where(
        mask[..., None] > 0, 255.0,
        _numpy(masked_images.patchify(x, PATCH))), PATCH)
    again = model.masked_forward(hidden_changed, noise.astype("float32"))
    np.testing.assert_allclose(_numpy(again["pixels"]), _numpy(out["pixels"]),
                               atol=1e-5)
    assert model.features(x).shape == (2, 16)
