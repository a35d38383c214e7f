"""The stage loop of `fit_recipe`.

Per stage: freeze (`set_trainable_blocks`), recompile with a fresh Adam,
restore the stage's backup when resuming (`transfer.training.resume`),
`fit` with `StageBackup` and `TerminateOnNaN` first among the callbacks,
then stop with `NonFiniteLossError` if the loss or the weights went NaN or
Inf. A head-only stage fits the head on backbone features computed once,
where `transfer.training.feature_cache` allows it (same callbacks, same
files). Finished stages of an earlier attempt are skipped. At the end,
`transfer.training.finish.finish_run` writes the finished run's files.
"""

import functools
import logging
import os
import time

import keras
import numpy as np

from transfer.data import labels
from transfer.models.freeze import set_trainable_blocks
from transfer.tensorboard import summaries
from transfer.training import best_weights
from transfer.training import feature_cache
from transfer.training import resume
from transfer.training import stage_options
from transfer.training.callbacks import stage_callbacks
from transfer.training.checkpoints import NonFiniteLossError
from transfer.training.early_stopping import StageEarlyStopping
from transfer.training.finish import finish_run

logger = logging.getLogger(__name__)


class _Progress:
    """What the loop has done so far: histories, records, the last stage."""

    def __init__(self, context):
        self.histories = []
        self.records = []
        self.states = []
        self.offset = 0
        self.previous = None  # the last finished stage's state
        # Whether the model in memory holds the weights the next stage
        # starts from; a resumed run loads them from the run directory.
        self.in_memory = not context.run.resumed
        self.model = context.model
        # The best weights so far: the last one a stage state recorded,
        # never a value whose file a failed write did not leave. Each stage
        # sets the monitor it uses (`RunBest.use`).
        recorded = [
            context.run.stage(i, stage)
            for i, stage in enumerate(context.recipe)
        ]
        monitor, mode = stage_options.monitor_for(
            context.model, context.validation_data, context.recipe.stages[0])
        self.best = best_weights.RunBest(
            context.run.directory, monitor, mode,
            record=best_weights.latest_record(recorded),
        )
        self.best.verify()
        self.hparams = summaries.recipe_hparams(
            context.model, context.recipe, context.train_data,
            context.batch_size,
        )

    def starting_point(self, context):
        """Loads the weights a stage starts from into the model."""
        if self.previous is not None:
            return functools.partial(self.previous.restore, optimizer=False)
        return context.run.restore_initial


def fit_stages(context):
    """Trains every unfinished stage into `context.run`, holding the run
    directory's lock; writes the finished run's files; returns the
    histories. The caller enters the engine's scope.

    Args:
        context: a `transfer.training.context.StageContext`.
    """
    progress = _Progress(context)
    model = context.model
    for number, stage in enumerate(context.recipe, start=1):
        state = context.run.stage(number - 1, stage)
        progress.states.append(state)
        if state.done:
            logger.info(
                "Stage '%s' finished in an earlier attempt; not retraining it.",
                stage.name,
            )
            progress.histories.append(state.history(model))
            progress.records.append(state.record)
        else:
            _run_stage(context, progress, number, stage, state)
        progress.offset += stage.epochs
        progress.previous = state
    if not progress.in_memory:  # every stage had finished in earlier attempts
        # As the last stage left it: frozen and compiled as it trained, with
        # its optimizer's state, so that model.keras holds that state too.
        _prepare(context, stage)
        progress.previous.restore(model, optimizer=True)
    if context.task == "classification" and stage_options.one_hot_labels(
        stage
    ):
        # Leave the model compiled for integer labels, as users evaluate it.
        stage_options.compile_model(
            model, model.optimizer, jit_compile=context.jit_compile)
    seconds = time.perf_counter() - context.run.started
    finish_run(
        context, progress.histories, progress.records, progress.hparams,
        context.run.attempt_log(progress.states, seconds), progress.best,
    )
    return progress.histories


def _prepare(context, stage):
    """Freezes and compiles the model for `stage`; returns the freeze plan."""
    model = context.model
    plan = set_trainable_blocks(
        model, stage.trainable_blocks, train_batchnorm=stage.train_batchnorm
    )
    stage_options.compile_model(
        model,
        stage_options.build_optimizer(model, stage, context.steps_per_epoch),
        stage, jit_compile=context.jit_compile,
    )
    return plan


def _run_stage(context, progress, number, stage, state):
    """Freezes, compiles, restores, fits and records one unfinished stage."""
    model = context.model
    start = progress.starting_point(context)
    plan = _prepare(context, stage)
    data = stage_options.stage_data(
        stage, context.fit_kwargs, context.validation_data,
        context.num_classes, is_image=context.is_image, task=context.task,
    )
    resumed_epoch, first, end = _restore(progress, stage, state, start)
    logger.info(
        "Stage '%s': epochs %d to %d at lr %g, %s trainable parameters%s",
        stage.name, first, end - 1, stage.learning_rate,
        f"{plan.trainable_params:,}",
        f" (resumed after epoch {resumed_epoch})"
        if resumed_epoch is not None else "",
    )
    monitor, mode = stage_options.monitor_for(
        model, context.validation_data, stage)
    progress.best.use(monitor, mode)
    early = _early_stopping(stage, state, monitor, mode)
    callbacks = (
        stage_options.stage_callbacks(stage)
        + [resume.StageBackup(state, best=progress.best, run=context.run),
           keras.callbacks.TerminateOnNaN()]
        + ([early] if early is not None else [])
        + stage_callbacks(
            context, stage, number, plan,
            hparams=progress.hparams if first == 0 and number == 1 else None,
        )
    )
    cache_record = _fit(context, stage, state, callbacks, (first, end), data)
    if first >= end:  # nothing left to fit: no on_train_end exported it
        progress.best.export_h5(model, context.best_weights_path)
    _check_finite(model, stage, state, start)
    if early is not None and early.stopped_epoch is not None:
        state.finish_early(model, early.summary())
        _log_early_stop(context, stage, early)
    history = state.history(model)
    progress.histories.append(history)
    record = {
        **stage.get_config(),
        "trainable_params": plan.trainable_params,
        "seconds": state.state["seconds"],
        "metrics": {k: float(v[-1]) for k, v in history.history.items() if v},
        "plan": plan.to_dict(),
        "resumed_after_epoch": resumed_epoch,
        "feature_cache": cache_record,
        "monitor": monitor,
        "early_stopping": state.state.get("early_stop"),
    }
    state.mark_done(record)
    progress.records.append(record)
    logger.info("Stage '%s' done: %s", stage.name, record["metrics"])


def _restore(progress, stage, state, start):
    """Loads the weights the stage continues from; returns the epoch
    restored (or `None`) and the stage's first and end epochs."""
    model = progress.model
    resumed_epoch = state.restore(model)
    if resumed_epoch is None and not progress.in_memory:
        start(model)
    progress.in_memory = True
    first = progress.offset if resumed_epoch is None else resumed_epoch + 1
    if state.state.get("early_stop"):
        first = progress.offset + stage.epochs  # stopped early before a kill
    return resumed_epoch, first, progress.offset + stage.epochs


def _early_stopping(stage, state, monitor, mode):
    """The stage's `StageEarlyStopping`, or `None` without `patience`."""
    if stage.patience is None:
        return None
    return StageEarlyStopping(
        monitor, mode, stage.patience, stage.min_delta, state.directory,
        history=state.state["history"], epochs=state.state["epochs"],
    )


def _log_early_stop(context, stage, early):
    """Says in TensorBoard's stage text that (and where) the stage stopped."""
    summary = early.summary()
    best = summary["best_epoch"]
    text = (
        f"**Stage '{stage.name}' stopped early** after epoch "
        f"{summary['stopped_after_epoch'] + 1}: `{summary['monitor']}` did "
        f"not improve by more than {summary['min_delta']} for "
        f"{summary['patience']} epochs. The next stage starts from the "
        f"best epoch, {'none' if best is None else best + 1} "
        f"(`{summary['monitor']}` = {summary['best']})."
    )
    writer = summaries.EventWriter(
        os.path.join(context.log_dir, "stage"))
    try:
        writer.text("early_stopping", text, summary["stopped_after_epoch"])
    finally:
        writer.close()


def _fit(context, stage, state, callbacks, epochs, data):
    """Fits epochs `first` to `end - 1` of `epochs`, on `data` (the stage's
    fit arguments and validation data) or on cached features where the
    stage allows it; returns the feature cache's manifest record. On
    cached features only the head's weights change: `state` then backs up
    just those (and the optimizer) every epoch, over one full file
    (`StageState.back_up_only`)."""
    model = context.model
    first, end = epochs
    use_cache, reason = feature_cache.plan_cache(
        model, stage, context.train_data, context.cache_features,
        task=context.task,
        distributed=(context.distribution or {}).get("mode", "none"),
    )
    logger.info("Stage '%s': feature cache %s.", stage.name, reason)
    record = {"used": use_cache, "reason": reason}
    if first >= end:
        return record
    fit_kwargs, validation = data
    try:
        if use_cache:
            cached = feature_cache.CachedHeadFit(
                model, context.train_data, context.validation_data,
                context.batch_size, cache_dir=context.feature_cache_dir,
                verbose=context.verbose,
            )
            record.update(cached.to_dict())
            # The first stage's first epoch starts from the run's
            # initial weights (a fresh run, or one killed before any backup).
            start = (context.run.initial_path
                     if state.index == 0 and first == 0 else None)
            record["backups"] = (
                "head only" if state.back_up_only(
                    model, cached.head_weight_positions(), first,
                    source=start)
                else "whole model")
            cached.fit(initial_epoch=first, epochs=end,
                       callbacks=callbacks, verbose=context.verbose)
        else:
            stage_options.build_before_fit(
                model, fit_kwargs.get("x"), fit_kwargs.get("y"))
            model.fit(
                validation_data=validation, initial_epoch=first, epochs=end,
                callbacks=callbacks, verbose=context.verbose, **fit_kwargs,
            )
    except Exception as e:
        labels.raise_for_label_error(e)
        raise
    return record


def _check_finite(model, stage, state, start):
    """Raises `NonFiniteLossError` after a NaN/Inf epoch, first restoring
    the last good backup (or the stage's starting weights) into `model`."""
    losses = state.state["history"].get("loss", [])
    if state.non_finite is None and all(np.isfinite(losses)):
        return
    bad = state.non_finite or {
        "epoch": state.last_epoch, "loss": losses[-1], "what": "loss"
    }
    restored = state.restore(model)
    if restored is None:
        start(model)
    where = (
        f"after epoch {restored}" if restored is not None
        else "from the start of the stage"
    )
    problem = (
        f"the training loss became {bad['loss']}" if bad["what"] == "loss"
        else f"the weights became NaN or Inf (training loss {bad['loss']})"
    )
    raise NonFiniteLossError(
        f"Stage '{stage.name}' stopped at epoch {bad['epoch']}: {problem}. "
        "Non-finite weights were not saved; the model holds the last good "
        f"weights ({where}), and so does '{state.directory}'. Lower the "
        "stage's learning_rate or check the data for NaN/Inf values, then "
        "train into a new run_dir. "
        f"Received: loss={bad['loss']}"
    )
