"""The files a finished run leaves: model, best weights, report, recipe and,
last, the manifest (whose presence means "finished")."""

import os

from transfer import _backend
from transfer import _io
from transfer import _model_info
from transfer.models import tasks
from transfer.reporting.report import write_report
from transfer.saving import save_model
from transfer.tensorboard import summaries
from transfer.training.run_dir import BEST_WEIGHTS
from transfer.training.run_dir import CONFIG
from transfer.training.run_dir import LOGS
from transfer.training.run_dir import MANIFEST
from transfer.training.run_dir import MODEL
from transfer.training.run_dir import RECIPE
from transfer.training.run_dir import REPORT
from transfer.training.run_dir import path


def _manifest(context, stage_records, hparams, attempts, metadata, best):
    manifest = {
        "backend": _backend.backend(),
        "versions": _backend.framework_versions(),
        **metadata,
        "batch_size": context.batch_size,
        "recipe": context.recipe.get_config(),
        "stages": stage_records,
        "seconds": round(sum(a["seconds"] for a in attempts), 2),
        "attempts": context.run.data["attempts"],
        "attempt_log": attempts,
        "best": best.summary(),
        "checkpoint": BEST_WEIGHTS if best.record is not None else None,
        "model": MODEL,
        "logs": LOGS,
        "report": REPORT,
        "hparams": hparams,
        "jit_compile": context.jit_compile,
        "compilation_cache": _backend.compilation_cache(),
    }
    if context.preflight is not None:
        manifest["data"] = context.preflight.to_dict()
    if context.distribution is not None:
        manifest["distribution"] = context.distribution
    return manifest


def finish_run(context, histories, stage_records, hparams, attempts, best):
    """Writes model.keras, the best weights' .h5, the report, recipe.json
    and, last, manifest.json, whose presence means "finished".

    Args:
        context: the run's `transfer.training.context.StageContext`.
        histories: one `keras.callbacks.History` per stage.
        stage_records: the stages' manifest records.
        hparams: the run's HParams.
        attempts: `RunState.attempt_log(...)`: every attempt's seconds.
        best: the run's `transfer.training.best_weights.RunBest`.
    """
    model, run_dir = context.model, context.run.run_dir
    save_model(model, path(run_dir, MODEL))
    files = {MODEL: _io.sha256_file(path(run_dir, MODEL))}
    # From best.npz, rebuilt first if a failed write left it newer than the
    # state; a run killed before `fit` ended has no .h5 yet either.
    digest = best.export_h5(model, path(run_dir, BEST_WEIGHTS))
    if digest is not None:
        files[BEST_WEIGHTS] = digest
        files[os.path.relpath(best.path, run_dir)] = best.record["sha256"]
    metadata = dict(_model_info.metadata(model))
    names = context.class_names
    metadata["class_names"] = list(names) if names else None
    task = _model_info.model_task(model)
    if task == "multilabel" and context.validation_data is not None:
        metadata["thresholds"] = tasks.choose_thresholds(
            model, context.validation_data
        )
    manifest = _manifest(context, stage_records, hparams, attempts, metadata,
                         best)
    write_report(
        path(run_dir, REPORT), histories,
        stage_names=[s.name for s in context.recipe], model=model,
        data=context.validation_data if task == "classification" else None,
        class_names=names,
    )
    _io.write_json(path(run_dir, RECIPE), context.recipe.get_config())
    files[RECIPE] = _io.sha256_file(path(run_dir, RECIPE))
    if os.path.exists(path(run_dir, CONFIG)):
        files[CONFIG] = _io.sha256_file(path(run_dir, CONFIG))
    manifest["files"] = files
    last_epoch = max([e for h in histories for e in h.epoch] or [0])
    summaries.write_manifest(path(run_dir, LOGS), manifest, step=last_epoch)
    _io.write_json(path(run_dir, MANIFEST), manifest)
    context.run.finish()
    model.transfer_metadata = metadata
    return manifest
