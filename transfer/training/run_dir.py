"""The run directory: its layout, its checks, and the files a finished run
leaves. The one place that names the files of a run directory.

```
run_dir/
  config.json        the resolved `transfer train` config (CLI runs)
  recipe.json        the recipe, as `Recipe.get_config()`
  manifest.json      written last: the run finished (see `finish_run`)
  model.keras        the trained model
  logs/              TensorBoard event files
  report/            `transfer.write_report`: PNGs and metrics.json
  checkpoints/       backups and best weights (`transfer.training.resume`)
  evaluation/, export/   written later by `transfer evaluate` / `export`
```
"""

import hashlib
import os
import re

from transfer import _backend
from transfer import _io
from transfer import _model_info
from transfer.models import tasks
from transfer.reporting.report import write_report
from transfer.saving import save_model
from transfer.tensorboard import summaries
from transfer.training.checkpoints import BestWeightsCheckpoint

CONFIG = "config.json"
RECIPE = "recipe.json"
MANIFEST = "manifest.json"
MODEL = "model.keras"
LOGS = "logs"
REPORT = "report"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = os.path.join(CHECKPOINTS, "best.weights.h5")
EVALUATION = "evaluation"
EXPORT = "export"


def path(run_dir, name):
    """`run_dir/name` for one of the names above.

    Example:

    >>> path("runs/a", MODEL)
    'runs/a/model.keras'
    """
    return os.path.join(run_dir, name)


def is_finished(run_dir):
    """Whether `run_dir` holds a finished run (its manifest exists)."""
    return os.path.exists(path(run_dir, MANIFEST))


def stage_dirname(index, name):
    """The checkpoint folder name of stage `index` (from 0) named `name`.

    Example:

    >>> stage_dirname(0, "head"), stage_dirname(1, "fine tune")[:13]
    ('head', '02-fine_tune-')
    """
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:40]
    return f"{index + 1:02d}-{safe}-{digest}"


def check_run_dir(run_dir):
    """Refuses a finished run; checks that `run_dir` is writable.

    Raises:
        ValueError: `run_dir` holds `manifest.json`, or cannot be written.
    """
    if is_finished(run_dir):
        raise ValueError(
            f"'{run_dir}' already holds a finished run ({MANIFEST}); its "
            f"model is '{path(run_dir, MODEL)}' (load it with "
            "transfer.load_model). Pass a new run_dir so that two runs' logs "
            f"never mix. Received: run_dir={run_dir!r}"
        )
    try:
        _io.probe_writable(run_dir)
    except OSError as e:
        raise ValueError(
            f"Cannot write to run directory '{run_dir}' ({e.strerror}). "
            f"Choose a writable run_dir. Received: run_dir={run_dir!r}"
        ) from e


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
