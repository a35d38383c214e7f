"""TensorFlow on a CPU: no Grappler pass over each new graph function.

TensorFlow optimizes every `tf.function` graph with Grappler, its graph
optimizer (constant folding, arithmetic simplification, op fusion,
layout), the first time the function runs. For EfficientNet-Lite0's
training step that is about a quarter of a second of the first step, paid
again by the feature pass's `predict`, the head's `fit`, `evaluate` and
each new input shape; on a CPU the step it produced ran no faster than
the one TensorFlow runs without it (its oneDNN kernels and their fusions
do not depend on it).

Measured (2 cores, Intel Xeon, 2026-12-04; benchmarks/README.md
"TensorFlow's first step, Grappler, and Keras's saving"): EfficientNet-
Lite0's time to the first step (real weights, 96 px, batch 32), five
interleaved pairs of fresh processes, median 2.87 s without Grappler and
3.10 s with it (every pair 0.17-0.27 s sooner); steady state, with /
without, fresh processes alternating: EfficientNet-Lite0 `predict` at
batch 125 310.0 / 309.5 and 292.8 / 300.1 images/s, training 91.9 / 92.7
and 87.9 / 87.9, MobileNetV3Small training 189.3 / 189.9 and 183.3 /
188.4, a small ViT training 116.4 / 115.5 and 119.9 / 117.7, `predict`
394.7 / 419.6 and 400.0 / 426.2.

`import transfer` turns Grappler off when TensorFlow runs on a CPU (on a
GPU its layout pass matters, and it stays on), unless the process has set
`disable_meta_optimizer` itself (`tf.config.optimizer.
set_experimental_options`), which is kept. `TRANSFER_TF_SKIP_GRAPPLER=0`
keeps Grappler; the run manifest records it (`tf_graph`). The option is
read when a function first runs, so functions that already ran keep what
they had.
"""

import os

ENV = "TRANSFER_TF_SKIP_GRAPPLER"
OPTION = "disable_meta_optimizer"
_STATE = {}


def skip_grappler(enabled=True):
    """Turns TensorFlow's Grappler pass off (`True`) or back on (`False`)
    for graph functions that run for the first time after the call.

    Returns:
        Whether Grappler is skipped after the call (`False` on other
        backends).
    """
    import keras

    if keras.config.backend() != "tensorflow":
        return False
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({OPTION: bool(enabled)})
    _STATE["ours"] = True
    return bool(enabled)


def _gpu():
    # Physical devices only: `_backend.accelerator()` also lists logical
    # TPU devices, which starts TensorFlow's runtime at `import transfer`,
    # after which `tf.config.threading` settings can no longer be changed.
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _skipped():
    import tensorflow as tf

    return bool(tf.config.optimizer.get_experimental_options().get(OPTION))


def _set_options():
    """The options the process set (`get_experimental_options` adds
    TensorFlow's defaults to them)."""
    from tensorflow.python.eager import context

    return getattr(context.context(), "_optimizer_experimental_options", {})


def state():
    """The manifest's record: `None` off TensorFlow, else whether
    Grappler is skipped and how to change it."""
    import keras

    if keras.config.backend() != "tensorflow":
        return None
    skipped = _skipped()
    if skipped:
        how = f"{ENV}=0 keeps Grappler"
    elif _STATE.get("reason"):
        how = _STATE["reason"]
    else:
        how = f"on ({ENV}=0)"
    return {"grappler": not skipped, "how": how}


def automatic():
    """Applies the default: Grappler off on a CPU unless `ENV` is `0` or
    the process chose `disable_meta_optimizer` itself; returns the
    manifest's record, or `None` off TensorFlow."""
    import keras

    if keras.config.backend() != "tensorflow":
        return None
    chosen = OPTION in _set_options()
    if chosen and not _STATE.get("ours"):
        _STATE["reason"] = "set by the process (tf.config.optimizer)"
    elif os.environ.get(ENV, "1") == "0":
        skip_grappler(False)
    elif _gpu():
        skip_grappler(False)
        _STATE["reason"] = "on: a GPU"
    else:
        skip_grappler(True)
    return state()
