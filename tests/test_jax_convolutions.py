"""Keras's JAX depthwise convolutions as sums of shifted slices: the same
outputs and gradients as XLA's convolution (`transfer._jax_convolutions`)."""

import numpy as np
import pytest

from transfer import _jax_convolutions

pytestmark = pytest.mark.requires_backend("jax")


@pytest.fixture
def restore():
    """Puts back what the suite runs with (whatever a test set)."""
    before = _jax_convolutions.state()["shifted_sum_depthwise"]
    yield
    _jax_convolutions.use_fast_convolutions(before)


def _value_and_gradients(x, kernel, strides, padding):
    import jax
    import jax.numpy as jnp
    from keras.src.backend.jax import nn

    def loss(x, kernel):
        y = nn.depthwise_conv(x, kernel, strides, padding)
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        x, kernel)
    return [np.asarray(a) for a in (y, *grads)]


# Odd and even sizes with stride 2 (XLA pads 'same' unevenly then), the
# 3x3 and 5x5 kernels of MobileNet and EfficientNet, both paddings.
@pytest.mark.parametrize("size, kernel_size, strides, padding", [
    ((9, 9), 3, 2, "same"), ((8, 7), 5, 2, "same"), ((8, 7), 3, 1, "valid"),
    ((9, 9), 5, 1, "same"), ((8, 7), 3, 2, "valid"),
])
def test_same_outputs_and_gradients(restore, size, kernel_size, strides,
                                    padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 4, 1)).astype("float32")
    assert _jax_convolutions.use_fast_convolutions(False) is False
    expected = _value_and_gradients(x, kernel, strides, padding)
    assert _jax_convolutions.use_fast_convolutions(True) is True
    got = _value_and_gradients(x, kernel, strides, padding)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_cases_keep_keras_path(restore, monkeypatch):
    from keras.src.backend.jax import nn

    _jax_convolutions.use_fast_convolutions(True)
    calls = []
    original = _jax_convolutions._ORIGINAL["depthwise_conv"]
    monkeypatch.setitem(_jax_convolutions._ORIGINAL, "depthwise_conv",
                        lambda *a: calls.append(a) or original(*a))
    x = np.ones((1, 6, 6, 2), "float32")
    nn.depthwise_conv(x, np.ones((3, 3, 2, 2), "float32"))  # multiplier 2
    nn.depthwise_conv(x, np.ones((3, 3, 2, 1), "float32"), dilation_rate=2)
    assert len(calls) == 2
    nn.depthwise_conv(x, np.ones((3, 3, 2, 1), "float32"))
    assert len(calls) == 2


def test_on_by_default_and_off_by_environment(monkeypatch, restore):
    monkeypatch.delenv(_jax_convolutions.ENV, raising=False)
    assert _jax_convolutions.automatic()["shifted_sum_depthwise"] is True
    monkeypatch.setenv(_jax_convolutions.ENV, "0")
    assert _jax_convolutions.automatic()["shifted_sum_depthwise"] is False
