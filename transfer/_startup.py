"""Quiet start-up for the `transfer` command.

TensorFlow (imported by Keras, KerasHub and `transfer` itself for tf.data)
prints C++ log lines on start-up that no environment variable silences in
TF 2.21. On the command line they would bury the one-line results and
errors, so while the `transfer` command imports them, file descriptor 2 goes
to /dev/null. Library users and `transfer --debug` see everything: only the
`transfer` command and `python -m transfer` are quieted, and an import that
fails still raises its exception after stderr is restored.
"""

import contextlib
import os
import sys

_LOUD_FLAGS = ("--debug", "--verbose", "-v")


def _is_cli():
    argv = sys.argv or [""]
    if any(flag in argv for flag in _LOUD_FLAGS):
        return False
    # `python -m transfer` imports this package while argv[0] is still "-m".
    return os.path.basename(argv[0]) == "transfer" or argv[0] == "-m"


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_imports():
    """Imports TF, Keras and KerasHub with stderr muted, on the CLI only."""
    if not _is_cli() or "tensorflow" in sys.modules:
        return
    with _stderr_to_devnull():
        import keras  # noqa: F401
        import keras_hub  # noqa: F401
        import tensorflow  # noqa: F401
