"""Keras functional models on torch releasing intermediate tensors after
their last reader, and calling simple layers' `call` directly
(`transfer._torch_graph`): the same outputs, losses, gradients and state,
the tensors really let go, `Layer.__call__` really skipped, and kept
wherever it does more."""

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
    before = _torch_graph.state()
    yield
    _torch_graph.use_early_release(before["early_release"])
    _torch_graph.use_direct_calls(before["direct_calls"])


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
    monkeypatch.delenv(_torch_graph.DIRECT_ENV, raising=False)
    record = _torch_graph.automatic()
    assert record["early_release"] is True and record["direct_calls"] is True
    monkeypatch.setenv(_torch_graph.ENV, "0")
    record = _torch_graph.automatic()
    assert record["early_release"] is False and record["direct_calls"] is True
    monkeypatch.setenv(_torch_graph.DIRECT_ENV, "0")
    record = _torch_graph.automatic()
    assert record["direct_calls"] is False
    assert record["direct_calls_how"] == "off (TRANSFER_TORCH_DIRECT_CALLS=0)"


# Direct calls.

def _conv_model():
    """Convolutions, BatchNormalization (trainable: `training=True` updates
    its moving statistics), Dropout, ReLU, Add, Multiply, pooling,
    Concatenate, a nested model and a Dense head."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    a = keras.layers.ReLU(6.0)(x)
    b = keras.layers.DepthwiseConv2D(3, padding="same")(a)
    x = keras.layers.Add()([a, b])
    gate = keras.layers.Activation("sigmoid")(
        keras.layers.Conv2D(4, 1)(x))
    x = keras.layers.Multiply()([x, gate])
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1)(inner_in))
    pooled = keras.layers.GlobalAveragePooling2D()(inner(x))
    both = keras.layers.Concatenate()(
        [pooled, keras.layers.GlobalAveragePooling2D()(x)])
    x = keras.layers.Dropout(0.5, seed=1)(both)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _train_call(model, x):
    """Outputs, gradients and non-trainable state after one training call
    (dropout seeded)."""
    import torch

    keras.utils.set_random_seed(3)
    model.zero_grad()
    outputs = model(torch.as_tensor(x), training=True)
    (outputs ** 2).sum().backward()
    return (outputs.detach().cpu().numpy(),
            [v.value.grad.detach().cpu().numpy().copy()
             for v in model.trainable_variables],
            [keras.ops.convert_to_numpy(v)
             for v in model.non_trainable_variables])


def test_direct_calls_give_the_same_results(restore):
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(
        "float32")
    results, start = {}, None
    for direct in (False, True):
        # A fresh model each time: the dropout's seed state starts equal.
        model = _conv_model()
        start = start or model.get_weights()
        model.set_weights(start)
        assert _torch_graph.use_direct_calls(direct) is direct
        results[direct] = (_train_call(model, x),
                           np.asarray(model.predict_on_batch(x)))
    (out, grads, state), predicted = results[True]
    (out_k, grads_k, state_k), predicted_k = results[False]
    np.testing.assert_array_equal(out, out_k)
    np.testing.assert_array_equal(predicted, predicted_k)
    assert len(grads) == len(grads_k) == len(model.trainable_variables)
    for a, b in zip(grads + state, grads_k + state_k, strict=True):
        np.testing.assert_array_equal(a, b)
    # The moving statistics did move, dropout did drop: the comparison
    # covers training-mode behaviour.
    assert not np.array_equal(state[0], np.zeros_like(state[0]))
    assert not np.allclose(out, predicted)


@pytest.fixture
def called():
    """Names of the layers that went through `Layer.__call__`."""
    from keras.src.layers import layer as layer_module

    names = []
    real = layer_module.Layer.__call__

    def spy(self, *args, **kwargs):
        names.append(self.name)
        return real(self, *args, **kwargs)

    layer_module.Layer.__call__ = spy
    yield names
    layer_module.Layer.__call__ = real


def test_simple_layers_skip_layer_call(restore, called):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    x = np.ones((3, 4), "float32")
    _torch_graph.use_direct_calls(False)
    model.predict_on_batch(x)
    assert {"hidden", "out"} <= set(called)
    called.clear()
    _torch_graph.use_direct_calls(True)
    model.predict_on_batch(x)
    assert "hidden" not in called and "out" not in called


def test_layer_call_kept_where_it_does_more(restore, called):
    import torch

    class MyDense(keras.layers.Dense):  # a subclass: not on the list
        pass

    inputs = keras.Input((4,))
    x = MyDense(4, name="subclass")(inputs)
    x = keras.layers.Dense(4, name="regularized",
                           activity_regularizer="l2")(x)
    with keras.RematScope(mode="full"):
        remat = keras.layers.Dense(4, name="remat")
    x = keras.layers.Dense(4, name="plain")(remat(x))
    model = keras.Model(
        inputs, keras.layers.Dense(2, name="bfloat16", dtype="mixed_bfloat16")(x))
    _torch_graph.use_direct_calls(True)
    data = torch.ones((3, 4))
    called.clear()
    model(data, training=False)
    assert {"subclass", "regularized", "remat", "bfloat16"} <= set(called)
    assert "plain" not in called
    # The activity regularizer's loss is still recorded.
    assert len(model.losses) == 1
    # No `training` given (a plain `model(x)`): Keras's own path throughout.
    called.clear()
    model(data)
    assert "plain" in called

