"""Keras's torch convolutions on channels-last views: same results, no
layout copies (`transfer._torch_layout`)."""

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
    before = _torch_layout.state()["channels_last_views"]
    yield
    _torch_layout.use_channels_last_views(before)


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
