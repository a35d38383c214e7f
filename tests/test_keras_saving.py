"""Keras's saving finds the attribute skip sets it computed
(`transfer._keras_saving`): computed once per type, not once per layer,
and the saved model and weights are the same."""

import keras
import numpy as np
import pytest

import transfer
from transfer import _keras_saving


@pytest.fixture
def counted(monkeypatch):
    """Calls of Keras's own `get_attr_skipset` (what builds a reference
    `Layer()` and lists its attributes), by type."""
    calls = []
    original = _keras_saving._ORIGINAL["get_attr_skipset"]

    def counting(obj_type):
        calls.append(obj_type)
        return original(obj_type)

    monkeypatch.setitem(_keras_saving._ORIGINAL, "get_attr_skipset",
                        counting)
    yield calls
    _keras_saving.automatic()


def _save(model, directory, name):
    model.save(directory / f"{name}.keras")
    model.save_weights(directory / f"{name}.weights.h5")


def test_computed_once_per_type_and_files_unchanged(tmp_path, counted):
    keras.utils.set_random_seed(0)
    model = transfer.build_classifier("tiny_cnn", 3, weights=None)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3))
    layers = len(model._flatten_layers())

    _keras_saving.use_cache(False)
    keras.backend.clear_session()
    _save(model, tmp_path, "keras")
    without = len(counted)
    assert without > layers  # once per layer, and more
    counted.clear()

    _keras_saving.use_cache(True)
    keras.backend.clear_session()
    _save(model, tmp_path, "cached")
    assert len(counted) == len(set(counted)) < layers
    counted.clear()
    _save(model, tmp_path, "again")
    assert counted == []

    expected = model.predict(x, verbose=0)
    for name in ("keras", "cached"):
        loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
        for a, b in zip(loaded.get_weights(), model.get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)
        other = transfer.build_classifier("tiny_cnn", 3, weights=None)
        other.load_weights(tmp_path / f"{name}.weights.h5")
        np.testing.assert_array_equal(other.predict(x, verbose=0), expected)


def test_off_by_environment(monkeypatch):
    from keras.src.saving import saving_lib

    monkeypatch.setenv(_keras_saving.ENV, "0")
    try:
        assert _keras_saving.automatic() is False
        assert (saving_lib.get_attr_skipset
                is _keras_saving._ORIGINAL["get_attr_skipset"])
    finally:
        monkeypatch.delenv(_keras_saving.ENV)
        assert _keras_saving.automatic() is True
    assert saving_lib.get_attr_skipset is _keras_saving._cached_skipset
