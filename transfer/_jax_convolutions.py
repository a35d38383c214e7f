"""Keras's JAX depthwise convolutions as sums of shifted slices.

On a CPU, XLA runs the gradient of a depthwise convolution an order of
magnitude slower than the same arithmetic written as a sum of shifted
slices (2 CPU cores, a batch of 32 at 40x40x96, forward and backward: a
3x3 depthwise convolution 2,258 ms against 222 ms as nine shifted
multiply-adds). Mobile backbones (MobileNet, EfficientNet) have one in
every block. `use_fast_convolutions(True)` makes Keras's JAX backend
compute a 2-D channels-last depthwise convolution with depth multiplier 1
and no dilation as the sum over kernel positions of the (padded, strided)
shifted input times that position's weights, with XLA's 'same' padding
split. Everything else goes to Keras's own `jax.lax.conv_general_dilated`.

Measured on MobileNetV3Small training all layers (`model.fit`, jitted),
2 cores (Intel Xeon, AVX-512), 160 px, batch 32, with the machine
otherwise idle: 57.7 img/s against 23.5 with Keras's path (2.45x; one run
each, benchmarks/README.md, 2026-12-03). Its cost is a longer first
compile (65 s against 27 s at 96 px, under load, on an AVX2 machine; JAX's
persistent compilation cache keeps it for later runs).
The same trick for 1x1 convolutions (a matmul) was slower in that model
and is not used. Results are equal within float rounding
(tests/test_jax_convolutions.py). `import transfer` turns it on, on JAX
(`TRANSFER_JAX_FAST_CONVOLUTIONS=0` keeps Keras's path); the run manifest
records it (`jax_convolutions`).
"""

import os

ENV = "TRANSFER_JAX_FAST_CONVOLUTIONS"
_ORIGINAL = {}


def _pair(value):
    """(h, w) from an int or a pair."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _channels_last(data_format):
    from keras.src import backend

    return backend.standardize_data_format(data_format) == "channels_last"


def _pads(size, kernel, stride, padding):
    """(before, after) padding of one spatial axis, as XLA pads it."""
    if padding == "valid":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _depthwise_conv(inputs, kernel, strides=1, padding="valid",
                    data_format=None, dilation_rate=1):
    import jax.numpy as jnp

    if (inputs.ndim == 4 and _channels_last(data_format)
            and kernel.shape[-1] == 1 and _pair(dilation_rate) == (1, 1)
            and kernel.shape[2] == inputs.shape[-1]):
        kernel = jnp.asarray(kernel)
        x = jnp.asarray(inputs)
        (kh, kw), (sh, sw) = tuple(kernel.shape[:2]), _pair(strides)
        mode = padding.lower()
        ph = _pads(x.shape[1], kh, sh, mode)
        pw = _pads(x.shape[2], kw, sw, mode)
        if any(ph + pw):
            x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
        oh = (x.shape[1] - kh) // sh + 1
        ow = (x.shape[2] - kw) // sw + 1
        out = None
        for a in range(kh):
            for b in range(kw):
                term = x[:, a:a + sh * (oh - 1) + 1:sh,
                         b:b + sw * (ow - 1) + 1:sw, :] * kernel[a, b, :, 0]
                out = term if out is None else out + term
        return out
    return _ORIGINAL["depthwise_conv"](inputs, kernel, strides, padding,
                                       data_format, dilation_rate)


def use_fast_convolutions(enabled=True):
    """Turns the shifted-sum depthwise convolutions on or off (JAX only).

    Args:
        enabled: `True` routes Keras's JAX depthwise convolutions through
            them, `False` restores Keras's own. Defaults to `True`.

    Returns:
        Whether they are on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "jax":
        return False
    from keras.src.backend.jax import nn

    if not _ORIGINAL:
        _ORIGINAL["depthwise_conv"] = nn.depthwise_conv
    nn.depthwise_conv = (
        _depthwise_conv if enabled else _ORIGINAL["depthwise_conv"])
    return enabled


def state():
    """The manifest's record: `None` off JAX, else whether they are on and
    how to change it."""
    import keras

    if keras.config.backend() != "jax":
        return None
    from keras.src.backend.jax import nn

    enabled = nn.depthwise_conv is _depthwise_conv
    return {
        "shifted_sum_depthwise": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
    }


def automatic():
    """Applies the default (on, unless `TRANSFER_JAX_FAST_CONVOLUTIONS` is
    `0`); returns the manifest's record, or `None` off JAX."""
    import keras

    if keras.config.backend() != "jax":
        return None
    use_fast_convolutions(os.environ.get(ENV, "1") != "0")
    return state()
