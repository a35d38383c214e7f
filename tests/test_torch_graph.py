"""Keras functional models on torch releasing intermediate tensors after
their last reader (`transfer._torch_graph`): the same outputs, losses and
gradients, and the tensors really let go."""

import gc
import weakref

import keras
import numpy as np
import pytest

from transfer import _torch_graph

pytestmark = pytest.mark.requires_backend("torch")


@pytest.fixture
def restore():
    """Puts back what the suite runs with (whatever a test set)."""
    before = _torch_graph.state()["early_release"]
    yield
    _torch_graph.use_early_release(before)


def _branchy_model():
    """Skip connections, a tensor read twice by one node, a nested model,
    two outputs one of which is also read further on."""
    inputs = keras.Input((6,), name="x")
    a = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(8, name="b")(a)
    doubled = keras.layers.Add(name="doubled")([b, b])
    inner_in = keras.Input((8,))
    inner = keras.Model(
        inner_in, keras.layers.Dense(8, activation="tanh")(inner_in),
        name="inner")
    c = inner(doubled)
    skip = keras.layers.Add(name="skip")([a, c])
    first = keras.layers.Dense(3, name="first")(skip)
    second = keras.layers.Dense(2, name="second")(
        keras.layers.Concatenate()([first, skip]))
    return keras.Model(inputs, [first, second])


def _outputs_and_gradients(model, x, y):
    import torch

    outputs = [np.asarray(o) for o in model.predict_on_batch(x)]
    model.zero_grad()
    first, second = model(torch.as_tensor(x), training=True)
    loss = (first ** 2).sum() + ((second - torch.as_tensor(y)) ** 2).sum()
    loss.backward()
    grads = [v.value.grad.detach().cpu().numpy().copy()
             for v in model.trainable_variables]
    return outputs, float(loss.detach()), grads


def test_same_outputs_and_gradients(restore):
    keras.utils.set_random_seed(0)
    model = _branchy_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype("float32")
    y = rng.normal(size=(5, 2)).astype("float32")
    assert _torch_graph.use_early_release(False) is False
    expected = _outputs_and_gradients(model, x, y)
    assert _torch_graph.use_early_release(True) is True
    got = _outputs_and_gradients(model, x, y)
    for a, b in zip(got[0], expected[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[1] == expected[1]
    assert len(got[2]) == len(expected[2]) == 10
    for a, b in zip(got[2], expected[2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_intermediate_tensors_are_let_go(restore):
    import torch

    probes, alive = [], []

    class Probe(keras.layers.Layer):
        """Records a weak reference to its output; the next layer checks
        whether it is still alive."""

        def call(self, x):
            y = x * 2.0
            probes.append(weakref.ref(y))
            return y

    class Check(keras.layers.Layer):
        def call(self, x):
            gc.collect()
            # Alive only if something still holds the probe's output.
            alive.append(probes[-1]() is not None)
            return x + 1.0

    inputs = keras.Input((4,))
    x = Probe()(inputs)
    x = keras.layers.Dense(4)(x)
    x = keras.layers.Dense(4)(x)
    outputs = Check()(x)
    model = keras.Model(inputs, outputs)
    data = np.ones((2, 4), "float32")
    with torch.no_grad():
        _torch_graph.use_early_release(False)
        model(data)
        assert alive[-1] is True  # Keras keeps it until the call returns
        _torch_graph.use_early_release(True)
        model(data)
        assert alive[-1] is False  # released after its reader ran


def test_on_by_default_and_off_by_environment(monkeypatch, restore):
    monkeypatch.delenv(_torch_graph.ENV, raising=False)
    assert _torch_graph.automatic()["early_release"] is True
    monkeypatch.setenv(_torch_graph.ENV, "0")
    assert _torch_graph.automatic()["early_release"] is False
