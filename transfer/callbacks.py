"""Callbacks that `fit_recipe` adds to every stage, usable in any `fit`."""

import keras

from transfer import _backend


def default_callbacks(
    log_dir, *, checkpoint=None, monitor="val_accuracy", best_so_far=None
):
    """TensorBoard logging, plus a best-weights checkpoint when asked.

    Args:
        log_dir: TensorBoard log directory.
        checkpoint: path of a `.weights.h5` file for the best weights, or
            `None`. Defaults to `None`.
        monitor: the metric that decides "best". Defaults to
            `"val_accuracy"`.
        best_so_far: the best `monitor` value of earlier stages, so that a
            later stage only overwrites the checkpoint when it beats it.
            Defaults to `None`.

    Returns:
        A list of `keras.callbacks.Callback`.
    """
    _backend.require_tensorboard()
    callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir)]
    if checkpoint is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                checkpoint,
                monitor=monitor,
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_so_far,
            )
        )
    return callbacks
