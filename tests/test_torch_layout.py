"""Keras's torch convolutions on channels-last views: same results, no
layout copies; batch normalization in one pass: the same results to float32
rounding, gradients included (`transfer._torch_layout`)."""

import keras
import numpy as np
import pytest

from transfer import _torch_layout

pytestmark = pytest.mark.requires_backend("torch")


def _model():
    # Every path the views touch: 'same' padding with an odd and an even
    # stride (torch pads unevenly then), a depthwise convolution, both
    # poolings, a 1-D convolution (left as Keras does it).
    inputs = keras.Input((17, 17, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Conv2D(6, 1)(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Reshape((-1, 6))(x)
    x = keras.layers.Conv1D(4, 2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _loss_and_gradients(model, x, y):
    import torch

    model.zero_grad()
    logits = model(torch.as_tensor(x), training=True)
    loss = keras.losses.sparse_categorical_crossentropy(
        torch.as_tensor(y), logits, from_logits=True).mean()
    loss.backward()
    return (float(loss.detach()), [v.value.grad.numpy().copy()
                          for v in model.trainable_variables])


@pytest.fixture
def restore_layout():
    """Puts back the layout the suite runs with (whatever a test set)."""
    before = _torch_layout.state()
    yield
    _torch_layout.use_channels_last_views(before["channels_last_views"])
    _torch_layout.use_affine_batch_norm(before["affine_batch_norm"])


def test_views_give_the_same_loss_and_gradients(restore_layout):
    import torch

    keras.utils.set_random_seed(0)
    model = _model()
    x = np.random.default_rng(0).normal(size=(4, 17, 17, 3)).astype("float32")
    y = np.array([0, 1, 2, 1])
    assert _torch_layout.use_channels_last_views(False) is False
    loss, gradients = _loss_and_gradients(model, x, y)
    assert _torch_layout.use_channels_last_views(True) is True
    # The patched transpose hands torch a view: no copy of the batch.
    batch = torch.as_tensor(x)
    from keras.src.backend.torch import nn

    view = nn._transpose_spatial_inputs(batch)
    assert view.data_ptr() == batch.data_ptr()
    assert view.is_contiguous(memory_format=torch.channels_last)
    loss_views, gradients_views = _loss_and_gradients(model, x, y)
    assert loss_views == pytest.approx(loss, rel=1e-6)
    for a, b in zip(gradients_views, gradients, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_on_by_default_and_off_by_environment(monkeypatch, restore_layout):
    from keras.src.backend.torch import nn

    monkeypatch.delenv(_torch_layout.ENV, raising=False)
    assert _torch_layout.automatic()["channels_last_views"] is True
    assert nn._transpose_spatial_inputs is _torch_layout._views
    monkeypatch.setenv(_torch_layout.ENV, "0")
    assert _torch_layout.automatic()["channels_last_views"] is False
    assert nn._transpose_spatial_inputs is not _torch_layout._views
    monkeypatch.delenv(_torch_layout.BATCHNORM_ENV, raising=False)
    assert _torch_layout.automatic()["affine_batch_norm"] is True
    assert nn.batch_normalization is _torch_layout._affine_batch_normalization
    monkeypatch.setenv(_torch_layout.BATCHNORM_ENV, "0")
    assert _torch_layout.automatic()["affine_batch_norm"] is False
    assert nn.batch_normalization is not (
        _torch_layout._affine_batch_normalization)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("affine", [True, False])
def test_one_pass_batch_norm_matches_keras(axis, affine, restore_layout):
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 5, 6, 7)).astype("float32")
    channels = x.shape[axis]
    arrays = {
        "mean": rng.normal(3.0, 1.0, channels),
        "variance": rng.uniform(0.5, 4.0, channels),
        "offset": rng.normal(size=channels) if affine else None,
        "scale": rng.normal(1.0, 0.3, channels) if affine else None,
    }

    def run(enabled):
        _torch_layout.use_affine_batch_norm(enabled)
        tensors = {k: None if v is None else torch.tensor(
            v.astype("float32"), requires_grad=True)
                   for k, v in {"x": x, **arrays}.items()}
        out = keras.ops.batch_normalization(
            tensors["x"], tensors["mean"], tensors["variance"], axis=axis,
            offset=tensors["offset"], scale=tensors["scale"], epsilon=1e-3)
        # A loss whose gradient differs per element, so every argument's
        # gradient is exercised.
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)
         ).sum().backward()
        return out.detach().numpy(), {
            k: t.grad.numpy() for k, t in tensors.items() if t is not None}

    out, grads = run(True)
    out_keras, grads_keras = run(False)
    np.testing.assert_allclose(out, out_keras, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_keras.keys()
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_keras[name],
                                   rtol=1e-4, atol=1e-4, err_msg=name)


def test_batch_norm_layer_trains_the_same(restore_layout):
    # A BatchNormalization layer in training mode (batch statistics, moving
    # averages) and inference mode, with the one pass and without.
    import torch

    x = np.random.default_rng(1).normal(2.0, 3.0, (8, 4, 4, 3)).astype(
        "float32")
    results = []
    for enabled in (True, False):
        _torch_layout.use_affine_batch_norm(enabled)
        keras.utils.set_random_seed(0)
        layer = keras.layers.BatchNormalization(momentum=0.5)
        data = torch.tensor(x, requires_grad=True)
        trained = layer(data, training=True)
        (trained ** 2).sum().backward()
        results.append((trained.detach().numpy(), data.grad.numpy(),
                        np.asarray(layer(data, training=False).detach()),
                        [np.asarray(keras.ops.convert_to_numpy(v))
                         for v in layer.weights]))
    for a, b in zip(results[0], results[1], strict=True):
        for u, v in zip(a if isinstance(a, list) else [a],
                        b if isinstance(b, list) else [b], strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
