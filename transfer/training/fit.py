"""`fit_recipe()`: train a model stage by stage into a run directory."""

import logging
import os
import shutil

import keras

from transfer import _backend
from transfer import _inputs
from transfer import _model_info
from transfer.data import fingerprint as data_fingerprint
from transfer.data import labels
from transfer.models import tasks
from transfer.models.classifier import check_head_classes
from transfer.reporting.plots import require_matplotlib
from transfer.training import engines
from transfer.training import fingerprint as fingerprint_lib
from transfer.training import lock
from transfer.training import resume
from transfer.training import run_dir as run_dir_lib
from transfer.training import stage_options
from transfer.training import stages
from transfer.training.context import StageContext
from transfer.training.feature_cache import check_cache_features
from transfer.training.feature_store import check_feature_cache_dir
from transfer.training.recipe import Recipe

logger = logging.getLogger(__name__)


def fit_recipe(
    model,
    recipe,
    train_data,
    validation_data=None,
    *,
    run_dir,
    batch_size=32,
    callbacks=None,
    class_names=None,
    verbose="auto",
    profile_batch=0,
    distribute=None,
    cache_features="auto",
    feature_cache_dir=None,
    force_resume=False,
    run_files=None,
):
    """Trains `model` stage by stage, logging and saving into `run_dir`.

    For each stage: set the `trainable` flags (`set_trainable_blocks`),
    recompile with a fresh `keras.optimizers.Adam(stage.learning_rate)` (a
    `MultiOptimizer` of one Adam per block with `layer_decay`; the stage's
    schedule, label smoothing, augmentation, class weights and EMA: see
    `Stage` and `transfer.training.stage_options`), and call `model.fit` with `initial_epoch` continuing the epoch count, so the
    TensorBoard curves of stage 2 carry on from stage 1. Writes TensorBoard
    logs to `run_dir/logs` (see `transfer.tensorboard.callbacks` for the tags: scalars,
    stages, freeze plans, HParams, input images and, with validation data,
    confusion matrices and top losses; compare runs with `tensorboard
    --logdir` on the folder holding the run directories), the best weights to
    `run_dir/checkpoints/best.weights.h5`, then `run_dir/model.keras`,
    `run_dir/manifest.json` and `run_dir/report/` (`transfer.write_report`).

    A crash loses at most the epoch in progress: model and optimizer are
    backed up at every epoch end in `run_dir/checkpoints/<stage>/`
    (`transfer.training.resume`), each file before the state that names
    it, so a failed write (a full disk) never leaves a state pointing at a
    missing file. Rerun the same command and the run resumes: finished
    stages are not retrained, the interrupted one continues from its last
    finished epoch with its optimizer state, and later stages run. A rerun
    with other data or settings (files added, removed or changed, another
    split, seed, image size or interpolation, augmentation, recipe, batch
    size or classes; see `transfer.training.fingerprint`) is refused with
    the differences listed, unless `force_resume=True`. A finished run (`manifest.json`) is
    never reused, and a second process pointed at a run directory in use is
    refused (`RunDirInUseError`). A refused call writes nothing into
    `run_dir`: every check runs before the lock is taken and the first file
    written.
    The interpolation the training data was resized with (as
    `load_image_folder`, `load_image_csv` and `make_dataset` record it)
    becomes the model's (`transfer_metadata["interpolation"]`, saved in the
    manifest), so that `transfer evaluate`, `report` and `predict` resize
    as training did; data that does not say keeps the backbone's.
    With `validation_data`, a classifier's run ends by fitting a
    temperature on the validation logits (`transfer.calibration.calibrate`):
    it is kept in `transfer_metadata["calibration"]` and the manifest, with
    the ECE before and after and `report/reliability_diagram.png`, and
    prediction divides the logits by it; without, the manifest records
    that none was fitted (T = 1). A failed calibration is logged, never
    raised. A temperature the model brought is dropped: new weights get
    a new one.
    Labels outside `[0, num_classes)` are refused on every backend. A NaN or
    Inf loss stops the run with `NonFiniteLossError`, the model holding the
    last good weights; NaN weights are never saved.

    With `distribute` (see `transfer.distribution_scope`, in which the
    model must be built), every stage compiles and fits on the engine the
    model was built on: Keras's distribution API on JAX, `tf.distribute`
    on TensorFlow. `batch_size` (or the dataset's batch) is the global
    batch, split evenly over the replicas; learning rates are not rescaled.
    The global and per-device batch and the rule are logged and written to
    `manifest.json` (`distribution`). With several processes only the chief
    (process 0) writes `run_dir`; the others work in a temporary directory
    that is removed afterwards.

    Args:
        model: a `keras.Model` from `transfer.build_classifier`.
        recipe: a `Recipe` or a list of `Stage`s.
        train_data: a `tf.data.Dataset` or `keras.utils.PyDataset` of
            `(images, labels)` batches, or an `(x, y)` tuple of arrays.
        validation_data: the same kinds, or `None`. Defaults to `None`.
        run_dir: directory for logs, checkpoints, model and manifest.
        batch_size: batch size for array data. Defaults to `32`.
        callbacks: extra callbacks, added to every stage. Defaults to `None`.
        class_names: names of the classes, for the manifest, the confusion
            matrices and the report; they must match the head's classes of a
            model trained before (see `transfer.replace_head`). Defaults to
            `None`: the `class_names` of `train_data`, else the head's.
        verbose: passed to `model.fit`. Defaults to `"auto"`.
        profile_batch: batch(es) to profile on the TensorFlow backend, as
            `keras.callbacks.TensorBoard` takes it; other backends log one
            line and skip it. Defaults to `0` (off).
        distribute: `"none"`, `"data_parallel"` or `"model_parallel"`
            (JAX only). Defaults to `None`: the recipe's `distribute`, else
            whatever scope the model was built in.
        cache_features: `"auto"` computes the frozen backbone's features
            once for a head-only stage (`trainable_blocks=0`) and trains the
            head on them, unless random augmentation runs before the head
            or cannot be ruled out; `True` caches even then (one augmented
            copy), `False` never. Each stage's choice and reason are in the
            log and the manifest (`stages[i].feature_cache`); see
            `transfer.training.feature_cache`. Defaults to `"auto"`.
        feature_cache_dir: a directory that keeps those features across
            runs: a rerun of the same head stage (same Keras version and
            backend, backbone config and weights, examples and labels)
            loads them instead of running the backbone. The manifest's
            `feature_cache` says `disk`: `"hit"`, `"miss"`, `"off"` or why
            not, with the entry `key`; see `transfer.training.feature_store`.
            Deleting the directory is safe. Defaults to `None` (no disk
            cache).
        force_resume: resume an unfinished run although its data or
            settings differ from those it started with (the differences are
            logged and recorded in `run.json`). Defaults to `False`.
        run_files: `{file name: text}` written into `run_dir` once the lock
            is held and the run's state checked, such as the `config.json`
            of `transfer.workflow.train_run`, so that a refused call leaves
            `run_dir` as it was. Defaults to `None`.

    Returns:
        A list with one `keras.callbacks.History` per stage (for a resumed
        run, every epoch of the stage, across attempts).

    Raises:
        ValueError: bad arguments or data, a finished `run_dir`, an
            unfinished one of another recipe or other data (each difference
            listed), or a model not built in the `distribution_scope` that
            `distribute` asks for; raised before training.
        RunDirInUseError: another live process trains into `run_dir`.
        NonFiniteLossError: the loss became NaN or Inf.

    Example:

    >>> import os
    >>> model = transfer.build_classifier(
    ...     "small_cnn", 2, weights=None, image_size=32)
    >>> x, y = transfer.synthetic_images(16, 32, 2)
    >>> histories = transfer.fit_recipe(
    ...     model, [transfer.Stage("head", 1, 1e-3)], (x, y),
    ...     validation_data=(x, y), run_dir="runs/a", batch_size=8,
    ...     class_names=["cat", "dog"], verbose=0)
    >>> len(histories), len(histories[0].history["val_accuracy"])
    (1, 1)
    >>> sorted(os.listdir("runs/a"))
    ['.transfer.lock', 'checkpoints', 'logs', 'manifest.json', 'model.keras',
     'recipe.json', 'report']
    >>> transfer.load_model("runs/a/model.keras").transfer_metadata[
    ...     "class_names"]
    ['cat', 'dog']
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe(tuple(recipe))
    class_names = _check_arguments(
        model, recipe, (train_data, validation_data), class_names,
        (cache_features, feature_cache_dir),
    )
    run_dir_lib.check_run_files(run_files)
    plan = engines.plan_for_model(
        model, recipe.distribute if distribute is None else distribute
    )
    batch_plan = plan.batch_plan(
        _inputs.data_batch_size(train_data, batch_size))
    for data in (train_data, validation_data):
        engines.check_batches(plan, data, batch_size)
    # Non-chief processes never write run_dir; they copy its checkpoints
    # before the chief may change them, to resume as it does.
    scratch = None if plan.is_chief else engines.worker_scratch(
        plan, run_dir)
    engines.barrier(plan, "transfer.fit_recipe")
    if plan.is_chief:
        run_dir_lib.check_run_dir(run_dir)
    # Before the label checks wrap the datasets (`map` drops attributes).
    preflight = getattr(train_data, "transfer_preflight", None)
    _record_interpolation(model, train_data)
    _forget_calibration(model)
    # The training arrays are hashed once for the fingerprint and the
    # feature cache's key (they do not change inside this call).
    with data_fingerprint.shared_digests():
        settings, fingerprint = fingerprint_lib.run_fingerprint(
            model, recipe, train_data, validation_data, batch_size=batch_size,
            class_names=class_names,
        )
        train_data, validation_data = _checked_targets(
            model, train_data, validation_data)
        _backend.require_tensorboard()
        require_matplotlib()
        if plan.is_chief:
            # Reading only: a call refused here leaves run_dir as it was.
            lock.check_free(run_dir)
            resume.check_resume(run_dir, settings, fingerprint,
                                force_resume=force_resume)
        context = dict(
            train_data=train_data, validation_data=validation_data,
            batch_size=batch_size, callbacks=callbacks, class_names=class_names,
            verbose=verbose, cache_features=cache_features,
            feature_cache_dir=feature_cache_dir,
        )
        if not plan.is_chief:
            histories = _fit_as_worker(
                plan, scratch, (model, recipe),
                (settings, fingerprint, force_resume), context)
        else:
            distribution = {**plan.to_dict(), **batch_plan}
            if plan.handle is not None:
                logger.info("Distribution: %s", distribution)
            os.makedirs(run_dir, exist_ok=True)
            with lock.RunDirLock(run_dir), plan.scope():
                run = resume.RunState.open(
                    run_dir, model, settings, fingerprint,
                    force_resume=force_resume,
                )
                run_dir_lib.write_run_files(run_dir, run_files)
                histories = stages.fit_stages(StageContext(
                    model, recipe, run, **context,
                    profile_batch=_backend.supported_profile_batch(profile_batch),
                    preflight=preflight,
                    distribution=distribution,
                ))
    # A non-chief process waits here while the chief writes model, report
    # and manifest, so that no process reaches JAX's shutdown barrier long
    # before the other (it times out under load and aborts both).
    engines.barrier(plan, "transfer.fit_recipe.done")
    return histories


def _record_interpolation(model, train_data):
    """Records in `model`'s metadata how `train_data` resized its images,
    when the data says (`transfer_fingerprint["interpolation"]`)."""
    attached = getattr(train_data, "transfer_fingerprint", None) or {}
    used = attached.get("interpolation")
    metadata = _model_info.metadata(model)
    if used is None or not metadata or metadata.get("modality") == "text":
        return
    expected = metadata.get("interpolation")
    if expected is not None and used != expected:
        logger.info(
            "The training images are resized with %r, the backbone '%s' "
            "expects %r; the model records %r, for evaluate and predict.",
            used, metadata.get("backbone"), expected, used)
    model.transfer_metadata = dict(metadata, interpolation=used)


def _forget_calibration(model):
    """Drops a temperature fitted before (a reloaded model trained again):
    new weights need a new one, which the run fits at its end."""
    metadata = _model_info.metadata(model)
    if "calibration" in metadata:
        model.transfer_metadata = {
            k: v for k, v in metadata.items() if k != "calibration"}


def _check_arguments(model, recipe, data, class_names, cache_options):
    """Checks what needs no data pass; returns the class names to use."""
    train_data, validation_data = data
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model)}")
    cache_features, feature_cache_dir = cache_options
    check_cache_features(cache_features)
    check_feature_cache_dir(feature_cache_dir)
    class_names = check_head_classes(model, class_names, train_data)
    unlabelled = _model_info.is_self_supervised(model)
    num_classes = None if unlabelled else model.output_shape[-1]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} outputs but {len(class_names)} class "
            f"names were given. Received: class_names={list(class_names)}"
        )
    stage_options.check_block_counts(model, recipe)
    stage_options.check_monitors(model, recipe, validation_data)
    return class_names


def _checked_targets(model, train_data, validation_data):
    """Checks labels or targets against the head; returns the data, wrapped
    so that label checks also run batch by batch where they must."""
    if _model_info.is_self_supervised(model):
        return train_data, validation_data
    if _model_info.model_task(model) != "classification":
        tasks.check_targets(train_data, model, "Training")
        if validation_data is not None:
            tasks.check_targets(validation_data, model, "Validation")
        return train_data, validation_data
    num_classes = model.output_shape[-1]
    train_data = labels.check_labels(train_data, num_classes, "Training")
    if validation_data is not None:
        validation_data = labels.check_labels(
            validation_data, num_classes, "Validation"
        )
    return train_data, validation_data


def _fit_as_worker(plan, scratch, run, resume_check, context):
    """Trains a non-chief process's share without writing `run_dir`.

    Every process must run the same computations (stages, epochs, callback
    predictions), so a non-chief one runs the same stage loop into
    `scratch` (from `worker_scratch`), removed afterwards.
    """
    try:
        with plan.scope():
            model, recipe = run
            settings, fingerprint, force_resume = resume_check
            state = resume.RunState.open(
                os.path.join(scratch, "run"), model, settings, fingerprint,
                force_resume=force_resume,
            )
            return stages.fit_stages(StageContext(
                model, recipe, state, **context, profile_batch=0,
                # The chief's mode: the same choices (no feature cache).
                distribution=plan.to_dict(),
            ))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
