"""Keras's Adam and AdamW on TensorFlow as one fused op per variable.

Keras 3's `Adam.update_step` builds about 20 graph operations per trainable
variable (casts, powers, the two moment updates, the weight update), each
created in Python when TensorFlow traces the training step; for
EfficientNet-Lite0 with every block trainable that is a few thousand of the
step's operations. TensorFlow has the same update as one kernel,
`ResourceApplyAdam` (what tf.keras's Adam ran): `m = b1 m + (1 - b1) g`,
`v = b2 v + (1 - b2) g^2`, `var -= lr sqrt(1 - b2^t) / (1 - b1^t) * m /
(sqrt(v) + eps)`, Keras's formula. `use_fused_adam(True)` makes Keras's
Adam (and AdamW, which inherits its update) call it on TensorFlow; weight
decay, gradient clipping and accumulation, EMA and loss scaling stay
Keras's, around the update. AMSGrad, a distribution strategy and anything
that is not a plain float variable keep Keras's own update.

Measured (2 cores, Intel Xeon, 2026-12-03, `benchmarks/first_step.py`,
benchmarks/README.md): time to the first step of EfficientNet-Lite0 (real
weights, 96 px, batch 32) 4.89, 5.00 and 5.27 s with Keras's update, 4.10,
4.43 and 4.28 s fused (1.17x sooner, medians); training throughput did not
change measurably. Results are equal within float rounding
(tests/test_tf_adam.py). `import transfer` turns it
on, on TensorFlow (`TRANSFER_TF_FUSED_ADAM=0` keeps Keras's update); the
run manifest records it (`tf_fused_adam`).
"""

import os

ENV = "TRANSFER_TF_FUSED_ADAM"
_ORIGINAL = {}


def _fused_update_step(self, gradient, variable, learning_rate):
    import tensorflow as tf

    handle = getattr(variable, "handle", None)
    dtype = tf.as_dtype(variable.dtype)  # a tf.Variable's or Keras's name
    if (self.amsgrad or tf.distribute.has_strategy() or handle is None
            or not dtype.is_floating):
        return _ORIGINAL["update_step"](self, gradient, variable,
                                        learning_rate)
    index = self._get_variable_index(variable)
    local_step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=handle, m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(beta_1, local_step),
        beta2_power=tf.pow(beta_2, local_step),
        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype))


def use_fused_adam(enabled=True):
    """Turns the fused Adam update on or off (TensorFlow only).

    Args:
        enabled: `True` makes `keras.optimizers.Adam` and `AdamW` update
            each variable with TensorFlow's `ResourceApplyAdam`, `False`
            restores Keras's update. Defaults to `True`.

    Returns:
        Whether it is on after the call (`False` on other backends).
    """
    import keras

    if keras.config.backend() != "tensorflow":
        return False
    from keras.src.optimizers import adam

    if not _ORIGINAL:
        _ORIGINAL["update_step"] = adam.Adam.update_step
    adam.Adam.update_step = (
        _fused_update_step if enabled else _ORIGINAL["update_step"])
    return enabled


def state():
    """The manifest's record: `None` off TensorFlow, else whether it is on
    and how to change it."""
    import keras

    if keras.config.backend() != "tensorflow":
        return None
    from keras.src.optimizers import adam

    enabled = adam.Adam.update_step is _fused_update_step
    return {
        "fused_adam": enabled,
        "how": f"{ENV}=0 turns it off" if enabled else f"off ({ENV}=0)",
    }


def automatic():
    """Applies the default (on, unless `TRANSFER_TF_FUSED_ADAM` is `0`);
    returns the manifest's record, or `None` off TensorFlow."""
    import keras

    if keras.config.backend() != "tensorflow":
        return None
    use_fused_adam(os.environ.get(ENV, "1") != "0")
    return state()
