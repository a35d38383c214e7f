"""Lazy initial values on JAX (`transfer._jax_init`): no initializer runs
for weights the loader overwrites, zeros and ones without an XLA program,
and the same values as Keras's own path."""

import logging

import keras
import numpy as np
import pytest

import transfer
from transfer import _jax_init

pytestmark = pytest.mark.requires_backend("jax")


@pytest.fixture
def restore():
    """Puts back what the suite runs with (whatever a test set)."""
    before = _jax_init.state()["lazy_init"]
    yield
    _jax_init.use_lazy_init(before)


@pytest.fixture
def initializer_calls(monkeypatch):
    """Keras's own initializer calls made through the switch."""
    calls = []
    original = _jax_init._ORIGINAL["init"]

    def counted(variable, initializer):
        calls.append(variable.path)
        return original(variable, initializer)

    monkeypatch.setitem(_jax_init._ORIGINAL, "init", counted)
    return calls


def _build_small_cnn(weights):
    keras.utils.set_random_seed(0)
    model, _, _ = transfer.build_backbone("small_cnn", weights=weights,
                                          image_size=16)
    return [np.asarray(w) for w in model.get_weights()]


def test_random_init_is_the_same_with_and_without(restore):
    assert _jax_init.use_lazy_init(False) is False
    expected = _build_small_cnn(None)
    assert _jax_init.use_lazy_init(True) is True
    got = _build_small_cnn(None)
    assert len(got) == len(expected) == 40  # 8 convolutions, 8 BNs
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # Not all zeros and ones: the convolutions' random kernels are in it.
    assert np.std(got[0]) > 0


def test_loaded_weights_run_no_initializer(restore, tmp_path,
                                           initializer_calls):
    _jax_init.use_lazy_init(False)
    model, _, _ = transfer.build_backbone("small_cnn", weights=None,
                                          image_size=16)
    rng = np.random.default_rng(1)
    saved = [rng.normal(size=w.shape).astype("float32")
             for w in model.get_weights()]
    model.set_weights(saved)
    path = str(tmp_path / "small.weights.h5")
    model.save_weights(path)
    _jax_init.use_lazy_init(True)
    del initializer_calls[:]
    got = _build_small_cnn(path)
    for a, b in zip(got, saved, strict=True):
        np.testing.assert_array_equal(a, b)
    # Every variable's first value was the file's.
    assert initializer_calls == []


def test_variables_nothing_assigned_get_their_initial_values(restore):
    _jax_init.use_lazy_init(True)
    kernel = np.arange(6, dtype="float32").reshape(2, 3)
    with _jax_init.deferred_initialization():
        layer = keras.layers.Dense(
            3, bias_initializer=keras.initializers.Constant(0.5))
        layer.build((None, 2))
        assert layer.kernel._value is None  # no value yet
        layer.kernel.assign(kernel)
    np.testing.assert_array_equal(np.asarray(layer.kernel), kernel)
    np.testing.assert_array_equal(np.asarray(layer.bias), [0.5] * 3)
    assert layer.bias._initializer is None
    np.testing.assert_array_equal(
        np.asarray(layer(np.ones((1, 2), "float32"))), [[3.5, 5.5, 7.5]])


@pytest.mark.parametrize("initializer, dtype, fill", [
    ("zeros", "float32", 0), ("ones", "float32", 1),
    ("zeros", "bfloat16", 0), ("zeros", "int64", 0),
])
def test_zeros_and_ones_without_a_program(restore, caplog, initializer,
                                          dtype, fill):
    import jax

    _jax_init.use_lazy_init(True)
    # A shape no other test compiles for.
    shape = (7, 11 + len(dtype) + 10 * fill)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        variable = keras.Variable(initializer=initializer, shape=shape,
                                  dtype=dtype)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    assert variable.dtype == dtype
    value = np.asarray(variable.value).astype("float32")
    np.testing.assert_array_equal(value, np.full(shape, fill, "float32"))
    # Off, Keras's path compiles one (the check above can fail).
    _jax_init.use_lazy_init(False)
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        keras.Variable(initializer=initializer, shape=shape, dtype=dtype)
    assert [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_on_by_default_and_off_by_environment(monkeypatch, restore):
    monkeypatch.delenv(_jax_init.ENV, raising=False)
    assert _jax_init.automatic()["lazy_init"] is True
    monkeypatch.setenv(_jax_init.ENV, "0")
    assert _jax_init.automatic()["lazy_init"] is False
    # Off, the block defers nothing.
    with _jax_init.deferred_initialization():
        variable = keras.Variable(initializer="glorot_uniform", shape=(2, 2))
    assert variable._value is not None


def test_load_model_runs_no_initializer_for_saved_weights(
        restore, tmp_path, initializer_calls):
    _jax_init.use_lazy_init(True)
    keras.utils.set_random_seed(0)
    model = transfer.build_classifier("small_cnn", 3, weights=None,
                                      image_size=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    del initializer_calls[:]
    loaded = transfer.load_model(path, compile=True)
    # Only what the file does not hold got its initializer: a dropout's
    # seed state, the loss tracker's total and count.
    saved = {v.path for v in loaded.weights + loaded.optimizer.variables}
    assert len(saved) > 40
    assert initializer_calls and saved.isdisjoint(initializer_calls)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables,
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(loaded.predict_on_batch(x),
                               model.predict_on_batch(x), rtol=1e-6)
