"""The run directory: its layout and its checks. The one place that names
the files of a run directory; light enough for the CLI to import before
Keras (`transfer.training.finish` writes a finished run's files).

```
run_dir/
  config.json        the resolved `transfer train` config (CLI runs)
  recipe.json        the recipe, as `Recipe.get_config()`
  manifest.json      written last: the run finished
                     (`transfer.training.finish.finish_run`)
  .transfer.lock     the PID of the process training into it
  model.keras        the trained model
  logs/              TensorBoard event files
  report/            `transfer.write_report`: PNGs and metrics.json
  checkpoints/       backups and best weights (`transfer.training.resume`)
  evaluation/, export/   written later by `transfer evaluate` / `export`
```

`manifest.json` lists the files it refers to with their sha256 (`files`),
the best epoch (`best`), and every attempt with its seconds
(`attempt_log`; `seconds` is their sum).
"""

import hashlib
import os
import re

from transfer import _io

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

    Creates nothing: a missing `run_dir` is checked through the folder it
    would be made in, and an existing one is left as it was.

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
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(
            f"run_dir '{run_dir}' is a file, not a directory. Pass a "
            f"directory path. Received: run_dir={run_dir!r}"
        )
    try:
        _io.probe_nearest(run_dir)
    except OSError as e:
        raise ValueError(
            f"Cannot write to run directory '{run_dir}' ({e.strerror}). "
            f"Choose a writable run_dir. Received: run_dir={run_dir!r}"
        ) from e


_OWNED = (RECIPE, MANIFEST, MODEL, LOGS, REPORT, CHECKPOINTS, EVALUATION,
          EXPORT)


def check_run_files(run_files):
    """Checks `fit_recipe`'s `run_files`: `{file name: text}` for files
    of the caller's (such as `config.json`) in the run directory.

    Raises:
        TypeError: not a mapping of names to strings.
        ValueError: a name that is not a plain file name, or one of the
            files `fit_recipe` writes itself.
    """
    if run_files is None:
        return
    if not isinstance(run_files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in run_files.items()
    ):
        raise TypeError(
            "`run_files` must map file names to text. Received: "
            f"run_files={type(run_files).__name__}"
        )
    for name in run_files:
        if (not name or name != os.path.basename(name) or name.startswith(".")
                or name in _OWNED):
            raise ValueError(
                "`run_files` names must be plain file names, not hidden and "
                f"not one of {list(_OWNED)}. Received: {name!r}"
            )


def write_run_files(run_dir, run_files):
    """Writes `run_files` into `run_dir` (the lock held, the state checked);
    returns `{name: sha256}`."""
    return {
        name: _io.write_text(path(run_dir, name), text)
        for name, text in (run_files or {}).items()
    }
