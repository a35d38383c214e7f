"""The files a finished run leaves: model, best weights, report, recipe and,
last, the manifest (whose presence means "finished")."""

from transfer import _backend
from transfer import _io
from transfer import _model_info
from transfer.models import tasks
from transfer.reporting.report import write_report
from transfer.saving import save_model
from transfer.tensorboard import summaries
from transfer.training.checkpoints import BestWeightsCheckpoint
from transfer.training.run_dir import BEST_WEIGHTS
from transfer.training.run_dir import LOGS
from transfer.training.run_dir import MANIFEST
from transfer.training.run_dir import MODEL
from transfer.training.run_dir import RECIPE
from transfer.training.run_dir import REPORT
from transfer.training.run_dir import path


def _manifest(context, stage_records, hparams, seconds, metadata):
    manifest = {
        "backend": _backend.backend(),
        "versions": _backend.framework_versions(),
        **metadata,
        "batch_size": context.batch_size,
        "recipe": context.recipe.get_config(),
        "stages": stage_records,
        "seconds": round(seconds, 2),
        "attempts": context.run.data["attempts"],
        "checkpoint": BEST_WEIGHTS,
        "model": MODEL,
        "logs": LOGS,
        "report": REPORT,
        "hparams": hparams,
        "jit_compile": context.jit_compile,
    }
    if context.preflight is not None:
        manifest["data"] = context.preflight.to_dict()
    if context.distribution is not None:
        manifest["distribution"] = context.distribution
    return manifest


def finish_run(context, histories, stage_records, hparams, seconds):
    """Writes model.keras, the best weights' .h5, the report, recipe.json
    and, last, manifest.json, whose presence means "finished".

    `context` is the run's `transfer.training.context.StageContext`.
    """
    model, run_dir = context.model, context.run.run_dir
    save_model(model, path(run_dir, MODEL))
    # A run killed after its last epoch's backup but before `fit` ended
    # resumes with nothing to train: write the best weights' .h5 here.
    best = BestWeightsCheckpoint(path(run_dir, BEST_WEIGHTS))
    best.set_model(model)
    best.export()
    metadata = dict(_model_info.metadata(model))
    names = context.class_names
    metadata["class_names"] = list(names) if names else None
    task = _model_info.model_task(model)
    if task == "multilabel" and context.validation_data is not None:
        metadata["thresholds"] = tasks.choose_thresholds(
            model, context.validation_data
        )
    manifest = _manifest(context, stage_records, hparams, seconds, metadata)
    write_report(
        path(run_dir, REPORT), histories,
        stage_names=[s.name for s in context.recipe], model=model,
        data=context.validation_data if task == "classification" else None,
        class_names=names,
    )
    last_epoch = max([e for h in histories for e in h.epoch] or [0])
    summaries.write_manifest(path(run_dir, LOGS), manifest, step=last_epoch)
    _io.write_json(path(run_dir, RECIPE), context.recipe.get_config())
    _io.write_json(path(run_dir, MANIFEST), manifest)
    context.run.finish()
    model.transfer_metadata = metadata
    return manifest
