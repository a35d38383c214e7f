"""Classifier heads on backbones: `build_classifier`, `replace_head`, weights.

Covers: transfer.models.classifier, transfer.saving.
"""

import os

import keras
import numpy as np
import pytest

import transfer


def test_classifier_layout(tiny_model):
    names = [layer.name for layer in tiny_model.layers]
    assert names == ["images", "preprocessing", "tiny_cnn", "pooler", "head_dropout", "predictions"]
    assert tiny_model.output_shape == (None, 2)
    assert tiny_model.transfer_metadata["backbone"] == "tiny_cnn"
    # The backbone starts frozen: stage 1 trains the head.
    assert not tiny_model.get_layer("tiny_cnn").trainable


def test_preprocessing_is_inside_the_model():
    model = transfer.build_classifier("tiny_cnn", 3, weights=None)
    layer = model.get_layer("preprocessing")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(np.full((1, 2, 2, 3), 255.0))), 1.0)


@pytest.mark.parametrize("num_classes", [1, 0, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="Received: num_classes="):
        transfer.build_classifier("tiny_cnn", num_classes, weights=None)


def test_image_size_below_minimum():
    with pytest.raises(ValueError, match="at least 16 pixels.*Received: image_size=8"):
        transfer.build_classifier("tiny_cnn", 2, weights=None, image_size=8)


def test_bad_pooling_and_dropout():
    with pytest.raises(ValueError, match="Received: pooling='sum'"):
        transfer.build_classifier("tiny_cnn", 2, weights=None, pooling="sum")
    with pytest.raises(ValueError, match="Received: dropout=1.5"):
        transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=1.5)


def test_save_and_reload_then_finetune(tiny_model, tiny_data, tmp_path):
    path = str(tmp_path / "m.keras")
    transfer.save_model(tiny_model, path)
    reloaded = transfer.load_model(path)
    np.testing.assert_allclose(reloaded.predict(tiny_data[0], verbose=0),
                               tiny_model.predict(tiny_data[0], verbose=0), atol=1e-5)
    # The nested backbone keeps its registry name, so freezing still works.
    plan = transfer.set_trainable_blocks(reloaded, 1)
    assert plan.trainable_params == 16 * 2 + 2 + 3 * 3 * 12 * 16
    # A plain Keras load works too.
    plain = keras.models.load_model(path)
    assert plain.get_layer("tiny_cnn").name == "tiny_cnn"


def test_corrupt_model_file(tmp_path):
    path = tmp_path / "bad.keras"
    path.write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match="Corrupt model file"):
        transfer.load_model(str(path))
    with pytest.raises(FileNotFoundError):
        transfer.load_model(str(tmp_path / "missing.keras"))


def test_failed_save_keeps_previous_file(tiny_model, tmp_path, monkeypatch):
    path = str(tmp_path / "m.keras")
    transfer.save_model(tiny_model, path)
    good = open(path, "rb").read()

    def broken_save(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tiny_model, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        transfer.save_model(tiny_model, path)
    assert open(path, "rb").read() == good
    assert [p for p in os.listdir(tmp_path) if p != "m.keras"] == []


def test_weights_file_source(tmp_path):
    model, _, _ = transfer.build_backbone("tiny_cnn", weights=None)
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    classifier = transfer.build_classifier("tiny_cnn", 2, weights=path)
    loaded = classifier.get_layer("tiny_cnn")
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
