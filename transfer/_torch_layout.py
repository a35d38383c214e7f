"""Keras's torch convolutions without a copy of the activations per call.

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
"""

import os

ENV = "TRANSFER_TORCH_CHANNELS_LAST_VIEWS"
_ORIGINAL = {}


def _views(inputs):
    import torch

    if inputs.ndim == 4:
        # The view's strides are exactly torch's channels_last format.
        return torch.permute(inputs, (0, 3, 1, 2))
    return _ORIGINAL["_transpose_spatial_inputs"](inputs)


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

    if not _ORIGINAL:
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
    return {
        "channels_last_views": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
    }


def automatic():
    """Applies the default (on, unless `TRANSFER_TORCH_CHANNELS_LAST_VIEWS`
    is `0`); returns the manifest's record, or `None` off torch."""
    import keras

    if keras.config.backend() != "torch":
        return None
    use_channels_last_views(os.environ.get(ENV, "1") != "0")
    return state()
