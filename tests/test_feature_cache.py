"""Feature caching in `fit_recipe`: same results as the naive loop."""

import json
import os

import keras
import numpy as np
import pytest

import transfer
from transfer import feature_cache

RECIPE = (("head", 3, 1e-2, 0), ("top", 1, 5e-3, 1))


def _stages():
    return [transfer.Stage(*s) for s in RECIPE]


def _pair():
    """Two tiny classifiers with the same weights."""
    first = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    second = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    second.set_weights(first.get_weights())
    return first, second


def _manifest(run_dir):
    with open(os.path.join(run_dir, "manifest.json")) as f:
        return json.load(f)


class _CrashAfter(keras.callbacks.Callback):
    """Raises at the end of one epoch, after `StageBackup` has run."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_cached_equals_naive_and_resumes(tiny_data, tmp_path):
    naive_model, cached_model = _pair()
    x, y = tiny_data
    # Two batches in a fixed order (no shuffle in the pipeline): the cached
    # head must see the same batches as the naive loop, also after resume.
    train = transfer.make_dataset(x, y, image_size=32, batch_size=8)
    common = dict(validation_data=tiny_data, verbose=0)
    naive = transfer.fit_recipe(
        naive_model, _stages(), train, run_dir=str(tmp_path / "naive"),
        cache_features=False, **common,
    )
    run_dir = str(tmp_path / "cached")
    with pytest.raises(RuntimeError, match="simulated crash"):
        transfer.fit_recipe(
            cached_model, _stages(), train, run_dir=run_dir,
            callbacks=[_CrashAfter(1)], **common,
        )
    cached = transfer.fit_recipe(
        cached_model, _stages(), train, run_dir=run_dir, **common
    )

    for n, c in zip(naive, cached, strict=True):
        assert n.epoch == c.epoch
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(
                n.history[key], c.history[key], rtol=1e-4, atol=1e-5
            )
    np.testing.assert_allclose(
        naive_model.predict(x, verbose=0), cached_model.predict(x, verbose=0),
        atol=1e-4,
    )
    head, top = _manifest(run_dir)["stages"]
    assert head["feature_cache"]["used"] is True
    assert head["resumed_after_epoch"] == 1
    assert head["feature_cache"]["train_samples"] == len(x)
    assert head["feature_cache"]["shuffle"] is False
    assert top["feature_cache"]["used"] is False
    assert "trainable_blocks=1" in top["feature_cache"]["reason"]
    naive_head = _manifest(str(tmp_path / "naive"))["stages"][0]
    assert naive_head["feature_cache"] == {
        "used": False, "reason": "off (cache_features=False)"
    }
    # The cached stage still logs its confusion matrix and epoch scalars.
    logs = os.path.join(run_dir, "logs")
    assert os.listdir(os.path.join(logs, "validation_images"))
    assert os.listdir(os.path.join(logs, "train"))


def test_augmented_data_falls_back(tiny_data, tiny_model):
    x, y = tiny_data
    head = transfer.Stage("head", 1, 1e-3, 0)
    augmented = transfer.make_dataset(
        x, y, image_size=32, batch_size=8,
        augment=transfer.data.default_augmentation(seed=1),
    )
    plain = transfer.make_dataset(x, y, image_size=32, batch_size=8, shuffle=True)

    use, reason = feature_cache.plan_cache(tiny_model, head, augmented, "auto")
    assert not use and "augmentation" in reason
    use, reason = feature_cache.plan_cache(tiny_model, head, augmented, True)
    assert use and "augmented copy" in reason
    assert feature_cache.plan_cache(tiny_model, head, plain, "auto")[0]
    assert feature_cache._shuffles(plain) and feature_cache._shuffles((x, y))
    assert feature_cache.plan_cache(tiny_model, head, (x, y), "auto")[0]


def test_random_layer_before_backbone_falls_back(tiny_model):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.RandomFlip(name="flip")(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pooler")(x)
    outputs = keras.layers.Dense(2, name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").trainable = False
    use, reason = feature_cache.plan_cache(
        model, transfer.Stage("head", 1, 1e-3, 0), (None, None), "auto"
    )
    assert not use and "flip" in reason


def test_bad_cache_features_is_refused(tiny_data, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="Received: cache_features='yes'"):
        transfer.fit_recipe(
            tiny_model, _stages(), tiny_data, run_dir=str(run_dir),
            cache_features="yes",
        )
    assert not (run_dir / "checkpoints").exists()
