"""The files a finished run leaves: model, best weights, report, recipe and,
last, the manifest (whose presence means "finished")."""

import logging
import os

from transfer import _backend
from transfer import _io
from transfer import _jax_convolutions
from transfer import _jax_init
from transfer import _model_info
from transfer import _tf_adam
from transfer import _tf_graph
from transfer import _torch_graph
from transfer import _torch_layout
from transfer import calibration
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

logger = logging.getLogger(__name__)
# The reliability diagram `_calibration` draws, in the report folder.
RELIABILITY_DIAGRAM = "reliability_diagram.png"


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
        "torch_layout": _torch_layout.state(),
        "torch_graph": _torch_graph.state(),
        "jax_convolutions": _jax_convolutions.state(),
        "jax_lazy_init": _jax_init.state(),
        "tf_fused_adam": _tf_adam.state(),
        "tf_graph": _tf_graph.state(),
    }
    if context.preflight is not None:
        manifest["data"] = context.preflight.to_dict()
    if context.distribution is not None:
        manifest["distribution"] = context.distribution
    return manifest


def _calibration(context, model, run_dir):
    """The model's `calibration` record: a temperature fitted on the
    validation data (`transfer.calibration.calibrate`), else T = 1 and why.

    A failure is logged and recorded, never raised: the run's stages are
    finished and its model is saved by then.
    """
    if context.validation_data is None:
        logger.info(
            "No validation data: no temperature fitted (T = 1); predicted "
            "probabilities are the model's softmax, uncalibrated.")
        return calibration.not_fitted("no validation data")
    diagram = os.path.join(REPORT, RELIABILITY_DIAGRAM)
    try:
        record = calibration.calibrate(
            model, context.validation_data, batch_size=context.batch_size,
            diagram_path=path(run_dir, diagram))
    except Exception as e:  # noqa: BLE001 (the trained model is kept)
        logger.warning(
            "Calibration failed (%s: %s): no temperature fitted (T = 1); "
            "the trained model is saved as it is.", type(e).__name__, e)
        return calibration.not_fitted(f"failed: {type(e).__name__}: {e}")
    return dict(record, reliability_diagram=diagram)


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
    if task == "classification" and not _model_info.is_self_supervised(
        model
    ):
        metadata["calibration"] = _calibration(context, model, run_dir)
        # The report's probabilities are then calibrated, as predict's.
        model.transfer_metadata = metadata
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
