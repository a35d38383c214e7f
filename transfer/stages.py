"""The stage loop of `fit_recipe`, and the files a finished run leaves.

Per stage: freeze (`set_trainable_blocks`), recompile with a fresh Adam,
restore the stage's backup when resuming (`transfer.resume`), `fit` with
`StageBackup` and `TerminateOnNaN` first among the callbacks, then stop with
`NonFiniteLossError` if the loss or the weights went NaN or Inf. A
head-only stage fits the head on backbone features computed once, where
`transfer.feature_cache` allows it (same callbacks, same files). Finished
stages of an earlier attempt are skipped. At the end: `model.keras`, the
report, `recipe.json` and, last, `manifest.json`.
"""

import functools
import logging
import os
import time

import keras
import numpy as np

from transfer import _backend
from transfer import feature_cache
from transfer import labels
from transfer import resume
from transfer import stage_options
from transfer import summaries
from transfer import tasks
from transfer.callbacks import default_callbacks
from transfer.callbacks import recipe_callbacks
from transfer.checkpoints import BestWeightsCheckpoint
from transfer.checkpoints import NonFiniteLossError
from transfer.export import save_model
from transfer.export import write_json
from transfer.freeze import set_trainable_blocks
from transfer.report import write_report

logger = logging.getLogger(__name__)


def _is_logits(model):
    """Whether the model's output layer has no activation (logits)."""
    activation = getattr(model.layers[-1], "activation", None)
    return activation is None or getattr(activation, "__name__", "") == "linear"


def _compile(model, optimizer, stage=None):
    """Compiles for the model's task and the stage's options, or masked-LM
    with masked-token metrics.

    Self-supervised image models (`transfer.ssl.ContrastivePretrainer`)
    compute their own loss and metrics: they get the optimizer only.
    """
    if getattr(model, "self_supervised", False):
        model.compile(optimizer=optimizer)
        return
    if is_masked_lm(model):
        # Unmasked positions carry zero sample weight: accuracy must be a
        # weighted metric to count masked tokens only.
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        )
        return
    model.compile(
        optimizer=optimizer,
        **stage_options.loss_and_metrics(model, stage, _is_logits(model)),
    )


def is_self_supervised(model):
    """Whether `model` trains on unlabelled data (masked LM, SimCLR)."""
    return is_masked_lm(model) or getattr(model, "self_supervised", False)


def is_masked_lm(model):
    try:
        import keras_hub
    except ImportError:
        return False
    return isinstance(model, keras_hub.models.MaskedLM)


def _text_dataset(items, batch_size, shuffle):
    """Strings (and labels) as a shuffled, batched `tf.data.Dataset`.

    KerasHub tasks run their tokenizer in `tf.data`; giving them a dataset
    that reshuffles every epoch keeps `shuffle` meaningful.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(items)
    if shuffle:
        ds = ds.shuffle(len(items[0]) if isinstance(items, tuple) else len(items),
                        reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def _is_text(x):
    return len(x) > 0 and isinstance(x[0], str)


def _fit_args(data, batch_size, shuffle):
    if isinstance(data, (list, np.ndarray)):  # unlabelled (e.g. masked LM)
        if _is_text(data):
            return {"x": _text_dataset(list(data), batch_size, shuffle), "shuffle": False}
        return {"x": data, "batch_size": batch_size, "shuffle": shuffle}
    if isinstance(data, tuple) and len(data) == 2 and _is_text(data[0]):
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"x and y differ in length: {len(data[0])} texts, "
                f"{len(data[1])} labels."
            )
        items = (list(data[0]), np.asarray(data[1]))
        return {"x": _text_dataset(items, batch_size, shuffle), "shuffle": False}
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(
                "Array data is an (x, y) tuple. "
                f"Received: a tuple of length {len(data)}"
            )
        x, y = data
        if len(x) != len(y):
            raise ValueError(
                f"x and y differ in length: {len(x)} images, {len(y)} labels."
            )
        return {"x": x, "y": y, "batch_size": batch_size, "shuffle": shuffle}
    return {"x": data, "shuffle": False}  # datasets shuffle themselves


def _steps_per_epoch(data, batch_size):
    if isinstance(data, (list, np.ndarray)):
        return int(np.ceil(len(data) / batch_size))
    if isinstance(data, tuple):
        return int(np.ceil(len(data[0]) / batch_size))
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            count = int(data.cardinality())
            return count if count > 0 else None
    except ImportError:
        pass
    try:
        return len(data)
    except TypeError:
        return None


def _best(monitor, states, mode="max"):
    seen = [v for s in states for v in s.state["history"].get(monitor, [])]
    if not seen:
        return None
    return min(seen) if mode == "min" else max(seen)


def fit_stages(model, recipe, run, train_data, validation_data, *,
                batch_size, callbacks, class_names, verbose, profile_batch,
                preflight, distribution=None, cache_features="auto",
                feature_cache_dir=None):
    """Trains every unfinished stage of `recipe` into `run` (a
    `resume.RunState`), holding the run directory's lock; returns the
    histories. `distribution` (the engine and batch plan, or `None`) goes
    into the manifest; the caller enters the engine's scope."""
    run_dir = run.run_dir
    log_dir = os.path.join(run_dir, "logs")
    checkpoint = os.path.join(run_dir, "checkpoints", "best.weights.h5")
    monitor, mode = stage_options.monitor_for(model, validation_data)
    task = "masked_lm" if is_masked_lm(model) else stage_options.model_task(model)
    fit_args = _fit_args(train_data, batch_size, shuffle=True)
    if isinstance(validation_data, tuple) and _is_text(validation_data[0]):
        validation_data = _fit_args(validation_data, batch_size, False)["x"]

    metadata = getattr(model, "transfer_metadata", None) or {}
    is_image_model = metadata.get("modality", "image") == "image"
    steps_per_epoch = _steps_per_epoch(train_data, batch_size)
    histories = []
    stage_records = []
    states = []
    offset = 0
    previous = None  # the last finished stage
    # Whether the model in memory holds the weights the next stage starts
    # from; a resumed run loads them from the run directory.
    in_memory = not run.resumed
    started = time.perf_counter()
    hparams = summaries.recipe_hparams(model, recipe, train_data, batch_size)
    for number, stage in enumerate(recipe, start=1):
        state = run.stage(number - 1, stage)
        states.append(state)
        if state.done:
            logger.info(
                "Stage '%s' finished in an earlier attempt; not retraining it.",
                stage.name,
            )
            histories.append(state.history(model))
            stage_records.append(state.record)
            offset += stage.epochs
            previous = state
            continue
        start = (
            functools.partial(previous.restore, optimizer=False)
            if previous is not None else run.restore_initial
        )
        plan = set_trainable_blocks(
            model, stage.trainable_blocks, train_batchnorm=stage.train_batchnorm
        )
        _compile(
            model,
            stage_options.build_optimizer(model, stage, steps_per_epoch),
            stage,
        )
        stage_fit_args, stage_validation = stage_options.stage_data(
            stage, fit_args, validation_data,
            None if is_self_supervised(model) else model.output_shape[-1],
            is_image=is_image_model, task=task,
        )
        resumed_epoch = state.restore(model)
        if resumed_epoch is None and not in_memory:
            start(model)
        in_memory = True
        first = offset if resumed_epoch is None else resumed_epoch + 1
        end = offset + stage.epochs
        logger.info(
            "Stage '%s': epochs %d to %d at lr %g, %s trainable parameters%s",
            stage.name, first, end - 1, stage.learning_rate,
            f"{plan.trainable_params:,}",
            f" (resumed after epoch {resumed_epoch})"
            if resumed_epoch is not None else "",
        )
        fresh = first == 0 and number == 1
        stage_callbacks = (
            stage_options.stage_callbacks(stage)
            + [resume.StageBackup(state), keras.callbacks.TerminateOnNaN()]
            + default_callbacks(
                log_dir, checkpoint=checkpoint, monitor=monitor,
                best_so_far=_best(monitor, states, mode), mode=mode,
                profile_batch=profile_batch,
            )
            + recipe_callbacks(
                log_dir, stage=stage, stage_number=number, freeze_plan=plan,
                validation_data=validation_data, class_names=class_names,
                train_data=train_data if fresh else None,
                hparams=hparams if fresh else None,
                images=is_image_model,
                classifier=task == "classification"
                and not is_self_supervised(model),
            )
            + list(callbacks or [])
        )
        use_cache, cache_reason = feature_cache.plan_cache(
            model, stage, train_data, cache_features, task=task,
            distributed=(distribution or {}).get("mode", "none"),
        )
        logger.info("Stage '%s': feature cache %s.", stage.name, cache_reason)
        cache_record = {"used": use_cache, "reason": cache_reason}
        if first < end and use_cache:
            try:
                cached = feature_cache.CachedHeadFit(
                    model, train_data, validation_data, batch_size,
                    cache_dir=feature_cache_dir,
                )
                cache_record.update(cached.to_dict())
                cached.fit(initial_epoch=first, epochs=end,
                           callbacks=stage_callbacks, verbose=verbose)
            except Exception as e:
                labels.raise_for_label_error(e)
                raise
        elif first < end:
            try:
                model.fit(
                    validation_data=stage_validation,
                    initial_epoch=first,
                    epochs=end,
                    callbacks=stage_callbacks,
                    verbose=verbose,
                    **stage_fit_args,
                )
            except Exception as e:
                labels.raise_for_label_error(e)
                raise
        _check_finite(model, stage, state, start)
        offset = end
        history = state.history(model)
        histories.append(history)
        final = {k: float(v[-1]) for k, v in history.history.items() if v}
        record = {
            **stage.get_config(),
            "trainable_params": plan.trainable_params,
            "seconds": state.state["seconds"],
            "metrics": final,
            "plan": plan.to_dict(),
            "resumed_after_epoch": resumed_epoch,
            "feature_cache": cache_record,
        }
        state.mark_done(record)
        stage_records.append(record)
        previous = state
        logger.info("Stage '%s' done: %s", stage.name, final)
    if not in_memory:  # every stage had finished in earlier attempts
        previous.restore(model, optimizer=False)
    elif task == "classification" and stage_options.one_hot_labels(stage):
        # Leave the model compiled for integer labels, as users evaluate it.
        _compile(model, model.optimizer)
    _finish(model, recipe, run, histories, stage_records, hparams,
            validation_data=validation_data, class_names=class_names,
            batch_size=batch_size, preflight=preflight,
            seconds=time.perf_counter() - started,
            distribution=distribution)
    return histories


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


def _finish(model, recipe, run, histories, stage_records, hparams, *,
            validation_data, class_names, batch_size, preflight, seconds,
            distribution=None):
    """Writes model.keras, the report and, last, manifest.json."""
    run_dir = run.run_dir
    log_dir = os.path.join(run_dir, "logs")
    save_model(model, os.path.join(run_dir, "model.keras"))
    # A run killed after its last epoch's backup but before `fit` ended
    # resumes with nothing to train: write the best weights' .h5 here.
    best = BestWeightsCheckpoint(
        os.path.join(run_dir, "checkpoints", "best.weights.h5")
    )
    best.set_model(model)
    best.export()
    metadata = dict(getattr(model, "transfer_metadata", {}) or {})
    metadata["class_names"] = list(class_names) if class_names else None
    task = stage_options.model_task(model)
    if task == "multilabel" and validation_data is not None:
        metadata["thresholds"] = tasks.choose_thresholds(model, validation_data)
    manifest = {
        "backend": _backend.backend(),
        "versions": _backend.framework_versions(),
        **metadata,
        "batch_size": batch_size,
        "recipe": recipe.get_config(),
        "stages": stage_records,
        "seconds": round(seconds, 2),
        "attempts": run.data["attempts"],
        "checkpoint": os.path.join("checkpoints", "best.weights.h5"),
        "model": "model.keras",
        "logs": "logs",
        "report": "report",
        "hparams": hparams,
    }
    if preflight is not None:
        manifest["data"] = preflight.to_dict()
    if distribution is not None:
        manifest["distribution"] = distribution
    write_report(
        os.path.join(run_dir, "report"), histories,
        stage_names=[s.name for s in recipe], model=model,
        data=validation_data if task == "classification" else None,
        class_names=class_names,
    )
    last_epoch = max([e for h in histories for e in h.epoch] or [0])
    summaries.write_manifest(log_dir, manifest, step=last_epoch)
    write_json(os.path.join(run_dir, "recipe.json"), recipe.get_config())
    write_json(os.path.join(run_dir, "manifest.json"), manifest)
    run.finish()
    model.transfer_metadata = metadata
    logger.info("Saved %s", os.path.join(run_dir, "model.keras"))
