"""The callbacks of one stage of `fit_recipe`, and `default_callbacks()`."""

import os

from transfer import _backend
from transfer.tensorboard import summaries
from transfer.tensorboard.callbacks import ConfusionMatrixLogger
from transfer.tensorboard.callbacks import EpochTensorBoard
from transfer.tensorboard.callbacks import HParamsLogger
from transfer.tensorboard.callbacks import InputImagesLogger
from transfer.tensorboard.callbacks import StageLogger
from transfer.tensorboard.callbacks import TopLossesLogger
from transfer.training.checkpoints import BestWeightsCheckpoint


def default_callbacks(
    log_dir,
    *,
    checkpoint=None,
    monitor="val_accuracy",
    best_so_far=None,
    profile_batch=0,
    mode="max",
):
    """TensorBoard logging, plus a best-weights checkpoint when asked.

    The checkpoint is a `BestWeightsCheckpoint`: an atomic `.npz` at every
    improving epoch (epochs with NaN or Inf loss or weights are skipped),
    and the `.weights.h5` file when `fit` ends.

    `EpochTensorBoard` (`keras.callbacks.TensorBoard` without the
    `evaluation_*_vs_iterations` curves, which restart with each stage's
    optimizer) writes per-epoch scalars, the learning rate included. Its
    graph is off (it exists on TensorFlow only, and `StageLogger` writes
    the model summary on every backend).

    Args:
        log_dir: TensorBoard log directory, checked for writing now.
        checkpoint: path of a `.weights.h5` file for the best weights, or
            `None`. Defaults to `None`.
        monitor: the metric that decides "best". Defaults to
            `"val_accuracy"`.
        mode: `"max"` when a higher `monitor` is better, `"min"` for a
            loss. Defaults to `"max"`.
        best_so_far: the best `monitor` value of earlier stages, so that a
            later stage only overwrites the checkpoint when it beats it.
            Defaults to `None`.
        profile_batch: batch (or `(start, stop)` batches) to profile into
            `log_dir/train`, on the TensorFlow backend; other backends log
            one line and train without profiling. Defaults to `0` (off).

    Returns:
        A list of `keras.callbacks.Callback`.

    Example:

    >>> callbacks = transfer.default_callbacks(
    ...     "logs", checkpoint="best.weights.h5", monitor="val_accuracy")
    >>> [type(callback).__name__ for callback in callbacks]
    ['EpochTensorBoard', 'BestWeightsCheckpoint']
    >>> callbacks[0].log_dir, callbacks[1].monitor
    ('logs', 'val_accuracy')
    >>> # Then: model.fit(x, y, validation_data=(x_val, y_val),
    >>> #                 callbacks=callbacks)
    """
    _backend.require_tensorboard()
    summaries.check_log_dir(log_dir)
    callbacks = [
        EpochTensorBoard(
            log_dir=log_dir,
            write_graph=False,
            profile_batch=_backend.supported_profile_batch(profile_batch),
        )
    ]
    if checkpoint is not None:
        callbacks.append(
            BestWeightsCheckpoint(
                checkpoint,
                monitor=monitor,
                mode=mode,
                initial_value_threshold=best_so_far,
            )
        )
    return callbacks



def trial_id(log_dir):
    """The HParams trial name of the run logging into `log_dir`.

    The run directory's name (`run_dir/logs` -> `"run_dir"`'s last part):
    the HParams table shows trial names in a narrow column, where whole
    paths such as `runs/image_finetune_...` were cut to the same prefix.
    `None` (a hash of the HParams) when `log_dir` has no parent folder.

    Example:

    >>> transfer.training.callbacks.trial_id("runs/flowers-lite0/logs")
    'flowers-lite0'
    """
    run_dir = os.path.dirname(os.path.normpath(log_dir))
    return os.path.basename(run_dir) or None


def stage_callbacks(context, stage, stage_number, freeze_plan, *, hparams):
    """The callbacks `fit_recipe` gives one stage, after its backup ones.

    `default_callbacks` (TensorBoard; the best weights are kept by
    `transfer.training.resume.StageBackup`, which writes them before the
    stage state that names them), then the dashboard
    panels: `StageLogger` always; `ConfusionMatrixLogger` and
    `TopLossesLogger` with validation data; `HParamsLogger` (its trial
    named after the run directory, see `trial_id`) and `InputImagesLogger`
    in the first stage of a fresh run. Image grids (inputs, top losses) are for image
    models only, the confusion matrix for classifiers only. The user's own
    callbacks come last.

    Args:
        context: the run's `transfer.training.context.StageContext`.
        stage: the `Stage`.
        stage_number: its position, from 1.
        freeze_plan: the stage's `FreezePlan`.
        hparams: the run's HParams in the run's very first epoch (they and
            the input images are logged then), else `None`.

    Returns:
        A list of `keras.callbacks.Callback`.
    """
    log_dir = context.log_dir
    callbacks = default_callbacks(
        log_dir, profile_batch=context.profile_batch)
    callbacks.append(StageLogger(log_dir, stage, stage_number, freeze_plan))
    if hparams is not None:
        callbacks.append(
            HParamsLogger(hparams, log_dir, trial_id=trial_id(log_dir))
        )
        if context.is_image:
            callbacks.append(InputImagesLogger(context.train_data, log_dir))
    validation = context.validation_data
    if validation is not None and context.classifier:
        names = context.class_names
        callbacks.append(ConfusionMatrixLogger(validation, names, log_dir))
        if context.is_image:
            callbacks.append(TopLossesLogger(validation, names, log_dir))
    return callbacks + list(context.callbacks or [])
