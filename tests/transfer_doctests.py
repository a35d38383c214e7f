"""Runs the `Example:` sections of `transfer`'s docstrings as doctests.

`make test` runs `PYTHONPATH=tests pytest -p transfer_doctests
--doctest-modules transfer`:
every example gets `transfer`, `keras` and `np` in its namespace, a fixed
seed, and a fresh temporary working directory (so `run_dir="runs/a"`
writes nowhere that matters). Examples use only public names and the
public `small_cnn` backbone with `weights=None`.

Keras's interactive logging is off while an example runs: progress bars
(the image preflight's, `predict`'s) and messages such as "Found 10 files
belonging to 2 classes." go to the log instead of stdout, so an example's
expected output is only what it prints or returns, never timings.
"""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _doctest_environment(request, doctest_namespace, tmp_path, monkeypatch):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    import keras

    import transfer

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    doctest_namespace.update(np=np, keras=keras, transfer=transfer)
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
        keras.backend.clear_session(free_memory=False)
