"""Feature caching in `fit_recipe`: same results as the naive loop.

Covers: transfer.training.feature_cache, transfer.training.feature_store.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest

import transfer
from transfer import _backend
from transfer.data import fingerprint as data_fingerprint
from transfer.training import best_weights
from transfer.training import feature_cache
from transfer.training import feature_store
from transfer.training import resume

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
    # A dataset keeps its batches in the feature pass.
    assert head["feature_cache"]["inference_batch_size"] == 8
    # Backups of the cached stage hold the head only, over the whole model
    # as the resumed `fit` began (epoch 2); the best weights come out the
    # same as the naive run's, whichever stage they are from.
    assert head["feature_cache"]["backups"] == "head only"
    stage_dir = os.path.join(run_dir, "checkpoints", "head")
    assert sorted(n for n in os.listdir(stage_dir) if n.endswith(".npz")) == [
        "base-0002.npz", "epoch-0002.npz"]
    with np.load(os.path.join(stage_dir, "epoch-0002.npz")) as backup:
        head_arrays = [k for k in backup.files if k.startswith("m")]
    assert len(head_arrays) == len(cached_model.get_layer(
        "predictions").weights) < len(cached_model.weights)
    best = {}
    for name in ("naive", "cached"):
        probe = transfer.build_classifier(
            "tiny_cnn", 2, weights=None, dropout=0.0)
        probe.load_weights(os.path.join(
            tmp_path, name, "checkpoints", "best.weights.h5"))
        best[name] = probe.get_weights()
    for a, b in zip(best["naive"], best["cached"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
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
        augment=transfer.data.images.default_augmentation(seed=1),
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
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="Received: feature_cache_dir="):
        transfer.fit_recipe(
            tiny_model, _stages(), tiny_data, run_dir=str(run_dir),
            feature_cache_dir=str(a_file),
        )
    assert not (run_dir / "checkpoints").exists()


# The persistent cache (`feature_cache_dir`, `transfer.training.feature_store`).

HEAD = (("head", 1, 1e-2, 0),)


def _head_run(model, data, run_dir, cache_dir, **kwargs):
    """One head-only epoch with the disk cache; the stage's record."""
    keras.utils.set_random_seed(7)  # the same shuffles in every run
    transfer.fit_recipe(
        model, [transfer.Stage(*s) for s in HEAD], data, run_dir=str(run_dir),
        batch_size=8, verbose=0, feature_cache_dir=str(cache_dir), **kwargs,
    )
    return _manifest(str(run_dir))["stages"][0]["feature_cache"]


def _key(model, data, ordered=True):
    """The entry key `fit_recipe` looks up for `model` on `data`."""
    extractor = keras.Model(
        model.inputs, model.get_layer("pooler").output,
        name="feature_extractor",
    )
    return feature_store.entry_key(
        feature_store.model_digest(extractor),
        feature_store.data_digest(data, ordered=ordered)[0],
    )


def _head_weights(model):
    return [keras.ops.convert_to_numpy(w)
            for w in model.get_layer("predictions").weights]


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return self.x[index * 8:index * 8 + 8], self.y[index * 8:index * 8 + 8]


def _no_features(*args, **kwargs):
    raise AssertionError("the backbone ran although the cache had its features")


def test_disk_cache_rerun_is_a_hit(tiny_data, tmp_path, monkeypatch):
    first, second = _pair()  # `second` has other auto-generated layer names
    cache = tmp_path / "features"
    exports = []
    real_export = best_weights.export_weights_h5
    monkeypatch.setattr(best_weights, "export_weights_h5", lambda *a: (
        exports.append(a[2]), real_export(*a)))
    record = _head_run(first, tiny_data, tmp_path / "a", cache,
                       validation_data=tiny_data)
    key = record["key"]
    assert record["disk"] == "miss" and len(key) == 64
    # Arrays: the backend's inference batch (4 training batches of 8 on
    # TensorFlow, the training batch for JAX and torch on a CPU).
    assert record["inference_batch_size"] == min(
        16, 8 * feature_cache.inference_batch_factor())
    # best.weights.h5 is written once (the stage's end); the run's end
    # finds it up to date. It holds best.npz, written from the head-only
    # backup of the best epoch and its base.
    checkpoints = tmp_path / "a" / "checkpoints"
    assert exports == [str(checkpoints / "best.weights.h5")]
    probe = transfer.build_classifier("tiny_cnn", 2, weights=None)
    probe.load_weights(str(checkpoints / "best.weights.h5"))
    with np.load(checkpoints / "best.npz") as arrays:
        saved = [arrays[k] for k in sorted(arrays.files)]
    for got, want in zip(probe.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(first.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(got, want)  # one epoch: the best
    # Validation holds the same examples, so it finds the entry just stored.
    assert record["disk_entries"]["validation"] == {"status": "hit", "key": key}
    assert record["compute_seconds"] > 0
    with open(cache / f"{key}.json") as f:
        sidecar = json.load(f)
    assert sidecar["backbone"] == "tiny_cnn"
    assert sidecar["examples"] == len(tiny_data[1])
    assert sidecar["backend"] == keras.config.backend()

    monkeypatch.setattr(feature_cache, "_features", _no_features)
    again = _head_run(second, tiny_data, tmp_path / "b", cache,
                      validation_data=tiny_data)
    assert again["disk"] == "hit" and again["key"] == key
    assert again["compute_seconds"] == 0
    assert sorted(os.listdir(cache)) == [f"{key}.json", f"{key}.npz"]
    for a, b in zip(_head_weights(first), _head_weights(second), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_disk_cache_key_covers_pixels_labels_and_weights(tiny_data, tmp_path):
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    x, y = tiny_data
    cache = tmp_path / "features"
    key = _head_run(model, tiny_data, tmp_path / "a", cache)["key"]
    assert key == _key(model, tiny_data)
    pixel = x.copy()
    pixel[3, 5, 7, 1] += 1
    label = y.copy()
    label[0] = 1 - label[0]
    keys = {key, _key(model, (pixel, y)), _key(model, (x, label))}
    assert len(keys) == 3
    # One BatchNorm statistic of the frozen backbone: a miss in fit_recipe.
    mean = model.get_layer("tiny_cnn").get_layer("block2_bn").moving_mean
    changed = keras.ops.convert_to_numpy(mean).copy()
    changed[0] += 1e-3
    mean.assign(changed)
    record = _head_run(model, tiny_data, tmp_path / "b", cache)
    assert record["disk"] == "miss" and record["key"] not in keys
    assert len([n for n in os.listdir(cache) if n.endswith(".npz")]) == 2


def _wrong_shape(path, key):
    np.savez(path, features=np.zeros((16, 3), "float32"),
             labels=np.zeros(16, "int32"), key=np.array(key))


class _CountingHashlib:
    """Stands in for `hashlib` in `transfer.data.fingerprint`: counts the
    bytes of every sha256 it starts."""

    def __init__(self):
        self.sizes = []

    def sha256(self, data=b""):
        self.sizes.append(memoryview(data).nbytes)
        return hashlib.sha256(data)


def test_fit_recipe_hashes_the_training_images_once(tmp_path, monkeypatch):
    # 96 images of 32x32x3 float32: 1.2 MB, above the shared digests' 1 MiB.
    x, y = transfer.synthetic_images(96, 32, 2)
    x = x.astype("float32")
    counting = _CountingHashlib()
    monkeypatch.setattr(data_fingerprint, "hashlib", counting)
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    record = _head_run(model, (x, y), tmp_path / "run", tmp_path / "cache")
    # The run's fingerprint and the feature cache's key read one digest.
    assert record["disk"] == "miss"
    assert counting.sizes.count(x.nbytes) == 1
    # The digests are the plain sha256 of the bytes (fingerprints stored by
    # earlier versions still match), and are forgotten after the call.
    stored = json.loads((tmp_path / "run" / "checkpoints" / "fingerprint.json")
                        .read_text())
    assert stored["data"]["training"]["x"]["sha256"] == (
        hashlib.sha256(x.tobytes()).hexdigest())
    data_fingerprint.array_fingerprint(x)
    data_fingerprint.array_fingerprint(x)
    assert counting.sizes.count(x.nbytes) == 3
    with data_fingerprint.shared_digests():
        data_fingerprint.array_fingerprint(x)
        data_fingerprint.array_fingerprint(x)
    assert counting.sizes.count(x.nbytes) == 4


def _truncated(path, key):
    path.write_bytes(b"PK\x03\x04 truncated")


@pytest.mark.parametrize("spoil", [_truncated, _wrong_shape])
def test_corrupt_disk_entry_is_recomputed(spoil, tiny_data, tiny_model,
                                          tmp_path, caplog):
    cache = tmp_path / "features"
    cache.mkdir()
    key = _key(tiny_model, tiny_data)
    spoil(cache / f"{key}.npz", key)
    with caplog.at_level("WARNING", logger="transfer.training.feature_store"):
        record = _head_run(tiny_model, tiny_data, tmp_path / "a", cache)
    assert record["disk"] == "miss" and record["key"] == key
    assert "replaced" in record["disk_entries"]["train"]
    assert "unusable" in caplog.text and key in caplog.text
    with np.load(cache / f"{key}.npz", allow_pickle=False) as entry:
        assert entry["features"].shape == (len(tiny_data[1]), 16)


def test_disk_cache_with_tf_data(tiny_data, tmp_path, monkeypatch):
    x, y = tiny_data
    shuffled = transfer.make_dataset(x, y, image_size=32, batch_size=8,
                                     shuffle=True)
    # A shuffling pipeline's digest ignores the order it yields ...
    assert (feature_store.data_digest(shuffled, ordered=False)
            == feature_store.data_digest(shuffled, ordered=False))
    # ... one that keeps its order hashes that order.
    ordered = transfer.make_dataset(x, y, image_size=32, batch_size=8)
    reversed_ = transfer.make_dataset(x[::-1], y[::-1], image_size=32,
                                      batch_size=8)
    assert (feature_store.data_digest(ordered, ordered=True)[0]
            != feature_store.data_digest(reversed_, ordered=True)[0])
    with pytest.raises(feature_store.UnhashableDataError,
                       match="_Batches data cannot be read"):
        feature_store.data_digest(_Batches(x, y), ordered=True)

    first, second = _pair()
    cache = tmp_path / "features"
    record = _head_run(first, shuffled, tmp_path / "a", cache)
    assert record["disk"] == "miss" and record["shuffle"] is True
    monkeypatch.setattr(feature_cache, "_features", _no_features)
    again = _head_run(second, shuffled, tmp_path / "b", cache)
    assert again["disk"] == "hit" and again["key"] == record["key"]


def test_head_only_backups_restore_and_give_the_best(tmp_path, tiny_model):
    # A killed head-only stage: two epoch backups of the head over one base,
    # the best recorded but not yet written to best.npz.
    model = tiny_model
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    head = model.get_layer("predictions").weights
    positions = [i for i, w in enumerate(model.weights)
                 if any(w is h for h in head)]
    state = resume.StageState(str(tmp_path / "head"), "run", 0, "head")
    best = best_weights.RunBest(str(tmp_path), "accuracy", "max")
    assert state.back_up_only(model, positions, 0)
    expected = {}
    for epoch, accuracy in ((0, 0.9), (1, 0.5)):
        for weight in head:
            weight.assign(np.full(weight.shape, epoch + 1.0, "float32"))
        assert state.record_epoch(model, epoch, {"accuracy": accuracy}, 0.1,
                                  best=best)
        expected[epoch] = model.get_weights()
    assert best.record["sha256"] is None and best.record["epoch"] == 0
    assert not os.path.exists(best.path)
    assert sorted(os.listdir(tmp_path / "head")) == [
        "base-0000.npz", "epoch-0000.npz", "epoch-0001.npz", "state.json"]
    # Resumed: the latest backup (head over base), then best.npz from the
    # recorded best epoch's backup and the base.
    fresh = transfer.build_classifier("tiny_cnn", 2, weights=None)
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    again = resume.StageState(str(tmp_path / "head"), "run", 0, "head")
    assert again.restore(fresh) == 1
    for got, want in zip(fresh.get_weights(), expected[1], strict=True):
        np.testing.assert_array_equal(got, want)
    resumed = best_weights.RunBest(
        str(tmp_path), "accuracy", "max",
        record=best_weights.latest_record([again]))
    assert resumed.verify() and resumed.record["sha256"] is not None
    with np.load(resumed.path) as arrays:
        saved = [arrays[k] for k in sorted(arrays.files)]
    for got, want in zip(saved, expected[0], strict=True):
        np.testing.assert_array_equal(got, want)
    # A changed base makes its backups unusable: nothing is restored.
    base = tmp_path / "head" / "base-0000.npz"
    base.write_bytes(base.read_bytes()[:-8] + b"changed!")
    assert again.restore(fresh) is None


def test_inference_batch_factor_per_backend():
    # A larger batch measured faster on TensorFlow only, on a CPU (the
    # factor's docstring has the figures): JAX and torch keep the
    # training batch there.
    expected = {"tensorflow": 4, "jax": 1, "torch": 1}[keras.config.backend()]
    if _backend.accelerator() != "cpu":
        expected = 4
    assert feature_cache.inference_batch_factor() == expected


def test_feature_pass_runs_at_an_inference_batch(tiny_data, tiny_model,
                                                 monkeypatch):
    monkeypatch.setattr(feature_cache, "inference_batch_factor", lambda: 4)
    x, y = tiny_data
    x, y = x[:15], y[:15]
    extractor = keras.Model(tiny_model.inputs,
                            tiny_model.get_layer("pooler").output)
    # Training batch 2: at most 8 per pass, spread over 15 examples as two
    # batches of 8, the second padded (one traced shape), the padding's
    # features dropped.
    assert feature_cache.inference_batch_size((x, y), 2) == 8
    assert feature_cache.inference_batch_size((x, y), 32) == 15
    shapes = []
    real = extractor.predict_on_batch
    extractor.predict_on_batch = lambda images: (
        shapes.append(images.shape), real(images))[1]
    features, labels = feature_cache._features(extractor, (x, y), 2)
    assert [s[0] for s in shapes] == [8, 8]
    np.testing.assert_array_equal(labels, y)
    expected = np.concatenate([real(x[i:i + 2]) for i in range(0, 15, 2)])
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_feature_pass_streams_batches_with_a_progress_bar(tiny_data, capsys):
    x, y = tiny_data
    model = transfer.build_classifier("tiny_cnn", 2, weights=None, dropout=0.0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    train = transfer.make_dataset(x, y, image_size=32, batch_size=8)
    batches = int(train.cardinality())
    cached = feature_cache.CachedHeadFit(model, train, None, 8, verbose=1)
    features, labels = cached.train
    assert features.ndim == 2 and len(features) == len(x)  # pooled, not images
    np.testing.assert_array_equal(labels, y)
    # One progress bar of the batches, ending at their count.
    assert f"{batches}/{batches}" in capsys.readouterr().out
    quiet = feature_cache.CachedHeadFit(model, train, None, 8, verbose=0)
    assert len(quiet.train[0]) == len(x)
    assert capsys.readouterr().out == ""
