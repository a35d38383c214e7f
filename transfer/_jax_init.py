"""Fewer XLA programs before the first step on JAX: lazy initial values.

On JAX every Keras initializer call is a small XLA program, one per
initializer and shape, each compiled (or read from the persistent
compilation cache) before it runs: EfficientNet-Lite0 ran 146 such
programs for random initial values that its pretrained weights then
overwrote, and Adam and the metrics 33 more to fill zeros. Two changes:

- `deferred_initialization()`, around a backbone's build and weight
  loading (`transfer.build_backbone`) and a saved model's load
  (`transfer.load_model`): variables created inside get no
  value until something assigns one (the weights loader); those still
  without a value when the block ends are initialized then, in creation
  order, with their own initializers (Keras fixes an initializer's seed
  when it is created, so the values are the same as without it).
- Zeros and ones (`keras.initializers.Zeros`, `Ones`: optimizer slots,
  metrics, normalization layers) are filled on the host and copied to the
  device, with no XLA program.

Neither applies under a `keras.distribution` layout or with Flax NNX
variables (Keras's own path then). Measured (2 cores, Intel Xeon,
2026-12-03, `benchmarks/first_step.py`, benchmarks/README.md): the first
step of EfficientNet-Lite0 (real weights, 96 px, batch 32, compilation
cache warm) ran 5 XLA programs instead of 182 and came 7.12 and 6.98 s
after the build started, against 8.68 and 8.56 s with Keras's initial
values (interleaved). Values are the same with and without it
(tests/test_jax_init.py). `import transfer` turns it on, on JAX
(`TRANSFER_JAX_LAZY_INIT=0` keeps Keras's path); the run manifest records
it (`jax_lazy_init`).
"""

import contextlib
import os
import threading

ENV = "TRANSFER_JAX_LAZY_INIT"
_ORIGINAL = {}
_local = threading.local()


def _plain(variable):
    """Whether Keras's default path would create `variable` unsharded."""
    from keras.src.backend import config
    from keras.src.backend.common import global_state

    return (getattr(variable, "_layout", None) is None
            and global_state.get_global_attribute("distribution") is None
            and not config.is_nnx_enabled())


def _host_fill(initializer):
    from keras import initializers

    # Exact classes only: a subclass may draw something else.
    if type(initializer) is initializers.Zeros:
        return 0
    if type(initializer) is initializers.Ones:
        return 1
    return None


def _initialize_with_initializer(self, initializer):
    pending = getattr(_local, "pending", None)
    if pending is not None and _plain(self):
        # No value until the loader assigns one (or the block ends).
        self._value = None
        self._initializer = initializer
        pending.append(self)
        return
    fill = _host_fill(initializer)
    if fill is not None and _plain(self):
        import jax
        import numpy as np

        value = np.full(self._shape, fill, dtype=jax.numpy.dtype(self._dtype))
        # A copy to the device; `jnp.asarray` would compile a program per
        # shape for it.
        self._initialize(jax.device_put(value))
        return
    _ORIGINAL["init"](self, initializer)


def _enabled():
    from keras.src.backend.jax import core

    return core.JaxVariable._initialize_with_initializer is (
        _initialize_with_initializer)


@contextlib.contextmanager
def deferred_initialization():
    """Defers initial values of variables created inside (JAX, when on).

    For a model whose weights are loaded right after it is built: the
    loader's assignments are the first values those variables get. At the
    end of the block, variables nothing assigned get their initializers'
    values. Anywhere else (another backend, the switch off, a nested
    block) it changes nothing.
    """
    import keras

    if (keras.config.backend() != "jax" or not _enabled()
            or getattr(_local, "pending", None) is not None):
        yield
        return
    _local.pending = pending = []
    try:
        yield
    finally:
        _local.pending = None
        for variable in pending:
            if variable._value is None:
                _ORIGINAL["init"](variable, variable._initializer)
            variable._initializer = None


def use_lazy_init(enabled=True):
    """Turns lazy initial values on or off (JAX only).

    Args:
        enabled: `True` defers initial values inside
            `deferred_initialization()` and fills zeros and ones on the
            host; `False` restores Keras's path. Defaults to `True`.

    Returns:
        Whether it is on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "jax":
        return False
    from keras.src.backend.jax import core

    if not _ORIGINAL:
        _ORIGINAL["init"] = core.JaxVariable._initialize_with_initializer
    core.JaxVariable._initialize_with_initializer = (
        _initialize_with_initializer if enabled else _ORIGINAL["init"])
    return enabled


def state():
    """The manifest's record: `None` off JAX, else whether it is on and
    how to change it."""
    import keras

    if keras.config.backend() != "jax":
        return None
    enabled = _enabled()
    return {
        "lazy_init": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
    }


def automatic():
    """Applies the default (on, unless `TRANSFER_JAX_LAZY_INIT` is `0`);
    returns the manifest's record, or `None` off JAX."""
    import keras

    if keras.config.backend() != "jax":
        return None
    use_lazy_init(os.environ.get(ENV, "1") != "0")
    return state()
