"""Keras's saving, with the cache it meant to have.

Saving a model (`model.save`, `save_weights`) walks every layer and asks
`keras.src.saving.saving_lib.get_attr_skipset` which attributes to skip.
That function stores its answer under the global attribute
`saving_attr_skipset_<type>` but looks it up under
`saving_attr_skiplist_<type>`, so it never finds it: each layer builds a
fresh reference `Layer()` and lists its attributes again (340 calls,
0.2 s, when EfficientNet-Lite0 saves as `.keras` and `.weights.h5`). The
lookup here reads the name Keras writes; the answer is the one Keras
computes (the same function, once per type and session: `clear_session`
forgets it). Files are unchanged.

Measured (2 cores, Intel Xeon, 2026-12-04, EfficientNet-Lite0 at 128 px,
three saves each, TensorFlow): `model.save` 0.383 / 0.259 / 0.267 s and
`save_weights` 0.230 / 0.201 / 0.202 s with Keras's lookup, 0.204 / 0.178
/ 0.202 s and 0.164 / 0.141 / 0.137 s with this one. Stage backups,
best weights and the run's `model.keras` are all saved this way.

`import transfer` applies it (`TRANSFER_KERAS_SAVING_CACHE=0` keeps
Keras's lookup).
"""

import os

ENV = "TRANSFER_KERAS_SAVING_CACHE"
_ORIGINAL = {}


def _cached_skipset(obj_type):
    from keras.src.backend.common import global_state

    skipset = global_state.get_global_attribute(
        f"saving_attr_skipset_{obj_type}", None)
    if skipset is not None:
        return skipset
    return _ORIGINAL["get_attr_skipset"](obj_type)


def use_cache(enabled=True):
    """Makes Keras's saving find the attribute skip sets it computed
    (`True`) or restores Keras's lookup (`False`); returns `enabled`."""
    from keras.src.saving import saving_lib

    if not _ORIGINAL:
        _ORIGINAL["get_attr_skipset"] = saving_lib.get_attr_skipset
    saving_lib.get_attr_skipset = (
        _cached_skipset if enabled else _ORIGINAL["get_attr_skipset"])
    return bool(enabled)


def automatic():
    """Applies the default (on unless `TRANSFER_KERAS_SAVING_CACHE` is
    `0`); returns whether it is on."""
    return use_cache(os.environ.get(ENV, "1") != "0")
