"""Keras's torch convolutions without a copy of the activations per call,
and its batch normalization in one pass.

Keras (3.15) runs a channels-last image batch `(n, h, w, c)` through torch's
channels-first convolutions by `permute(0, 3, 1, 2).contiguous()` (a copy
into channels-first memory) and then, inside `conv`, converts it to torch's
`channels_last` memory format (a second copy) because oneDNN's convolutions
are fastest there. The permuted view is already in `channels_last` memory
format: both copies, and their gradients' copies, are work native PyTorch
never does. `use_channels_last_views(True)` makes Keras's torch backend pass
the view itself for 4-D tensors (convolutions, depthwise convolutions and
pooling; 1-D and 3-D are left as Keras does them). Results are equal; only
memory layout changes (tests/test_torch_layout.py).

`import transfer` turns it on, on the torch backend
(`TRANSFER_TORCH_CHANNELS_LAST_VIEWS=0` keeps Keras's own path); the run
manifest records it (`torch_layout`). Measured with
`benchmarks/torch_profile.py` (figures in benchmarks/README.md).

Batch normalization as one multiply-add. Keras's torch
`batch_normalization` computes `(x - mean) * (scale / sqrt(var + eps)) +
offset` as a subtraction into a new tensor and two in-place passes: three
passes over the activations per BatchNormalization layer, forward. With
`use_affine_batch_norm(True)` the per-channel factor `a = scale /
sqrt(var + eps)` and shift `b = offset - mean * a` are computed first (a
few numbers per channel) and the activations pass once, `torch.addcmul(b,
x, a)`: the form PyTorch's own inference batch normalization uses. It is
differentiable in every argument (batch statistics in training mode
included); results equal Keras's to float32 rounding (not bit for bit).
Measured (2 CPU cores, on and off interleaved in one process, two runs,
benchmarks/README.md): EfficientNet-Lite0 at 128 px, batch 32, training
step 1.03-1.05x and `predict_on_batch` 1.09-1.11x faster; MobileNetV3Small
at 160 px 1.02-1.06x and 1.05-1.06x. `TRANSFER_TORCH_AFFINE_BATCHNORM=0`
keeps Keras's form; the manifest records it
(`torch_layout.affine_batch_norm`).
"""

import os

ENV = "TRANSFER_TORCH_CHANNELS_LAST_VIEWS"
BATCHNORM_ENV = "TRANSFER_TORCH_AFFINE_BATCHNORM"
_ORIGINAL = {}


def _views(inputs):
    import torch

    if inputs.ndim == 4:
        # The view's strides are exactly torch's channels_last format.
        return torch.permute(inputs, (0, 3, 1, 2))
    return _ORIGINAL["_transpose_spatial_inputs"](inputs)


def _affine_batch_normalization(x, mean, variance, axis, offset=None,
                                scale=None, epsilon=1e-3):
    """Keras's torch `batch_normalization`, with one pass over `x`."""
    import torch
    from keras.src.backend.torch.core import convert_to_tensor

    x = convert_to_tensor(x)
    mean = convert_to_tensor(mean)
    variance = convert_to_tensor(variance)
    shape = [1] * len(x.shape)
    shape[axis] = mean.shape[0]
    factor = torch.rsqrt(variance + epsilon)
    if scale is not None:
        factor = factor * convert_to_tensor(scale)
    shift = -mean * factor
    if offset is not None:
        shift = shift + convert_to_tensor(offset)
    return torch.addcmul(torch.reshape(shift, shape), x,
                         torch.reshape(factor, shape))


def use_affine_batch_norm(enabled=True):
    """Turns one-pass batch normalization on or off (torch backend only).

    Args:
        enabled: `True` makes Keras's torch `batch_normalization` one
            `torch.addcmul` with per-channel factor and shift, `False`
            restores Keras's three passes. Defaults to `True`.

    Returns:
        Whether it is on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "torch":
        return False
    from keras.src.backend.torch import nn

    if "batch_normalization" not in _ORIGINAL:
        _ORIGINAL["batch_normalization"] = nn.batch_normalization
    nn.batch_normalization = (
        _affine_batch_normalization if enabled
        else _ORIGINAL["batch_normalization"])
    return enabled


def use_channels_last_views(enabled=True):
    """Turns the channels-last views on or off (torch backend only).

    Args:
        enabled: `True` passes 4-D channels-last tensors to torch as views,
            `False` restores Keras's own transposes. Defaults to `True`.

    Returns:
        Whether the views are on after the call (`False` on other
        backends, where there is nothing to change).
    """
    import keras

    if keras.config.backend() != "torch":
        return False
    from keras.src.backend.torch import nn

    if "_transpose_spatial_inputs" not in _ORIGINAL:
        _ORIGINAL["_transpose_spatial_inputs"] = nn._transpose_spatial_inputs
    nn._transpose_spatial_inputs = (
        _views if enabled else _ORIGINAL["_transpose_spatial_inputs"]
    )
    return enabled


def state():
    """The manifest's record: `None` off torch, else whether the views are
    on and how to change it."""
    import keras

    if keras.config.backend() != "torch":
        return None
    from keras.src.backend.torch import nn

    enabled = nn._transpose_spatial_inputs is _views
    affine = nn.batch_normalization is _affine_batch_normalization
    return {
        "channels_last_views": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
        "affine_batch_norm": affine,
        "affine_batch_norm_how": (
            f"{BATCHNORM_ENV}=0 turns it off" if affine
            else f"off ({BATCHNORM_ENV}=0)"),
    }


def automatic():
    """Applies the defaults (views and one-pass batch normalization on,
    unless `TRANSFER_TORCH_CHANNELS_LAST_VIEWS` or
    `TRANSFER_TORCH_AFFINE_BATCHNORM` is `0`); returns the manifest's
    record, or `None` off torch."""
    import keras

    if keras.config.backend() != "torch":
        return None
    use_channels_last_views(os.environ.get(ENV, "1") != "0")
    use_affine_batch_norm(os.environ.get(BATCHNORM_ENV, "1") != "0")
    return state()
