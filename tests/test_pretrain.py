"""Self-supervised image pretraining (`transfer.pretraining.images`, `transfer.pretraining.contrastive`).

Covers: transfer.pretraining (contrastive, images, probes).
"""

import json
import os

import keras
import numpy as np
import pytest

import transfer
from transfer.pretraining import images as pretrain
from transfer.pretraining import probes
from transfer.pretraining.contrastive import ContrastivePretrainer
from transfer.pretraining.contrastive import nt_xent


def _images(n=32, size=32, seed=0):
    return transfer.synthetic_images(num_samples=n, image_size=size,
                                     num_classes=2, seed=seed)


def _tensor_steps(run):
    """{tag: steps} of the TensorBoard run directory `run`."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(run)
    accumulator.Reload()
    return {tag: sorted(e.step for e in accumulator.Tensors(tag))
            for tag in accumulator.Tags()["tensors"]}


def test_pretrain_then_build_classifier_uses_the_pretrained_weights(tmp_path):
    x, y = _images()
    run_dir = str(tmp_path / "ssl")
    result = transfer.pretrain_images(
        x, run_dir=run_dir, backbone="tiny_cnn", epochs=1, batch_size=16,
        holdout=(x, y),
    )
    history = result["history"].history
    assert np.isfinite(history["loss"][0]) and history["loss"][0] > 0
    assert 0.0 <= history["accuracy"][0] <= 1.0
    # The probe measured the starting point and epoch 0, into TensorBoard.
    assert [epoch for epoch, _ in result["probe"]] == [-1, 0]
    assert all(0.0 <= acc <= 1.0 for _, acc in result["probe"])
    logs = os.path.join(run_dir, "logs")
    assert _tensor_steps(os.path.join(logs, "probe")) == {
        "epoch_knn_accuracy": [0]}
    train_tags = _tensor_steps(os.path.join(logs, "train"))
    assert train_tags["epoch_loss"] == train_tags["epoch_accuracy"] == [0]
    with open(os.path.join(run_dir, "manifest.json")) as f:
        assert json.load(f)["task"] == "simclr"

    path = result["backbone"]
    assert path == os.path.join(run_dir, "backbone.keras")
    pretrained = result["model"].backbone
    classifier = transfer.build_classifier(path, 2, dropout=0.0)
    assert classifier.output_shape == (None, 2)
    loaded = classifier.get_layer("tiny_cnn")
    for a, b in zip(loaded.weights, pretrained.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # weights=None gives the same architecture from random init instead.
    fresh = transfer.build_classifier(path, 2, weights=None)
    assert not np.allclose(
        keras.ops.convert_to_numpy(fresh.get_layer("tiny_cnn").weights[0]),
        keras.ops.convert_to_numpy(pretrained.weights[0]))
    transfer.fit_recipe(classifier, [transfer.Stage("head", 1, 1e-3)], (x, y),
                        run_dir=str(tmp_path / "ft"), batch_size=16, verbose=0)


def test_pretrainer_saves_and_reloads(tmp_path):
    x, _ = _images(8)
    backbone, spec, _ = transfer.build_backbone("tiny_cnn", weights=None)
    model = ContrastivePretrainer(
        backbone, pretrain.default_augmentation(32, seed=1), scale=spec.scale,
        projection_dim=8, temperature=0.5)
    assert model(x).shape == (8, 2, 8)
    path = str(tmp_path / "pretrainer.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, ContrastivePretrainer)
    assert reloaded.get_config()["temperature"] == 0.5
    np.testing.assert_allclose(probes.embed(reloaded, x),
                               probes.embed(model, x), atol=1e-5)


def test_nt_xent_rewards_matching_views():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 1, 16)).astype("float32")
    same = np.concatenate([z, z], axis=1)
    other = np.concatenate([z, rng.normal(size=(8, 1, 16))], 1).astype("float32")
    loss_same, acc_same = nt_xent(same, 0.1)
    loss_other, acc_other = nt_xent(other, 0.1)
    assert float(acc_same) == 1.0
    assert float(loss_same) < float(loss_other)
    assert float(acc_other) < 1.0


def test_knn_probe_separates_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    features = rng.normal(size=(40, 4)) + np.eye(4)[labels] * 10.0
    assert probes._knn_accuracy(features, labels, 5) == 1.0
    assert probes._knn_accuracy(rng.normal(size=(40, 4)), labels, 5) < 0.9


def test_too_few_images_for_the_batch(tmp_path):
    x, _ = _images(8)
    with pytest.raises(ValueError, match="Only 8 unlabelled images for batch"):
        transfer.pretrain_images(x, run_dir=str(tmp_path / "r"),
                                 backbone="tiny_cnn", batch_size=16)
    assert not os.path.exists(tmp_path / "r")


def test_images_smaller_than_the_backbone_minimum(tmp_path):
    x = np.zeros((32, 8, 8), "uint8")  # tiny_cnn needs 16 px
    with pytest.raises(ValueError, match="needs at least 16. Pass image_size=16"):
        transfer.pretrain_images(x, run_dir=str(tmp_path / "r"),
                                 backbone="tiny_cnn", batch_size=16)
    assert not os.path.exists(tmp_path / "r")


def test_augmentation_that_changes_the_shape(tmp_path):
    x, _ = _images()
    bad = [keras.layers.RandomFlip(), keras.layers.Resizing(16, 16, name="shrink")]
    with pytest.raises(ValueError, match="'shrink' turns images of shape"):
        transfer.pretrain_images(x, run_dir=str(tmp_path / "r"),
                                 backbone="tiny_cnn", batch_size=16,
                                 augmentation=bad)
    with pytest.raises(TypeError, match="list of keras.layers.Layer"):
        pretrain.check_augmentation([lambda images: images], 32)
    assert not os.path.exists(tmp_path / "r")


def test_image_sources(tmp_path):
    from PIL import Image

    gray = np.random.default_rng(0).integers(0, 255, (5, 28, 28), "uint8")
    out = pretrain.image_array(gray, 32)
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    assert pretrain.image_array((gray, np.zeros(5)), None).shape == (5, 28, 28, 3)
    assert pretrain.image_array("digits", 16).shape[1:] == (16, 16, 3)
    for i in range(3):
        os.makedirs(tmp_path / "folder" / f"c{i}")
        Image.fromarray(gray[i]).save(tmp_path / "folder" / f"c{i}" / "a.png")
    assert pretrain.image_array(str(tmp_path / "folder"), 20).shape == (3, 20, 20, 3)


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="Received: weights='imagenet'"):
        transfer.build_classifier("small_cnn", 10)


class _Kill(Exception):
    pass


def test_killed_pretraining_resumes(tmp_path, monkeypatch):
    x, y = _images()
    run_dir = str(tmp_path / "ssl")
    original = probes.RepresentationProbe.on_epoch_end

    def die_after_epoch_1(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise _Kill()

    monkeypatch.setattr(probes.RepresentationProbe, "on_epoch_end",
                        die_after_epoch_1)
    with pytest.raises(_Kill):
        transfer.pretrain_images(x, run_dir=run_dir, backbone="tiny_cnn",
                                 epochs=3, batch_size=16, holdout=(x, y))
    assert not os.path.exists(os.path.join(run_dir, "backbone.keras"))
    monkeypatch.setattr(probes.RepresentationProbe, "on_epoch_end", original)
    result = transfer.pretrain_images(x, run_dir=run_dir, backbone="tiny_cnn",
                                      epochs=3, batch_size=16, holdout=(x, y))
    assert [epoch for epoch, _ in result["probe"]] == [1, 2]
    assert result["history"].epoch == [0, 1, 2]
    with open(os.path.join(run_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["stages"][0]["resumed_after_epoch"] == 1
    assert manifest["attempts"] == 2
    assert os.path.exists(result["backbone"])
    # A kill between manifest.json and backbone.keras: the rerun restores
    # the backbone from model.keras and names it.
    os.remove(result["backbone"])
    with pytest.raises(ValueError, match="finished pretraining run; its backbone"):
        transfer.pretrain_images(x, run_dir=run_dir, backbone="tiny_cnn",
                                 epochs=3, batch_size=16)
    assert os.path.exists(result["backbone"])
