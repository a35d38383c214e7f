"""Quick, quiet start-up for the `transfer` command.

`transfer --help`, `transfer COMMAND --help`, `transfer --version` and usage
errors answer before TensorFlow, Keras, JAX or torch is imported (those
imports take 10 s or more). When the process is the `transfer` command (the
console script or `python -m transfer`), the package's `__init__` leaves the
library out (`defer_library`), and `transfer.cli.main` loads it with
`load_library` once a command runs; an attribute of `transfer` asked for
before that loads it too.

While loading, the command keeps native log lines off stderr: TensorFlow
prints C++ log lines on import that no environment variable silences in
TF 2.21, so file descriptor 2 goes to /dev/null while TF, Keras and KerasHub
are imported; on a machine without a GPU device TensorFlow's CUDA probe
(`failed call to cuInit`) runs then too; `TF_CPP_MIN_LOG_LEVEL`,
`GRPC_VERBOSITY` and `GLOG_minloglevel` are set (unless already set) before
TF or JAX load; absl's Python logging shows errors only, and third-party
`FutureWarning`/`DeprecationWarning`s are hidden; `native_logs_muted`
wraps native calls that log every time (the LiteRT interpreter).
`transfer --verbose` and `--debug` show everything, and an import that
fails still raises its exception after stderr is restored. `import
transfer` in Python imports everything at once and changes no environment
variable or filter.
"""

import contextlib
import glob
import importlib
import os
import sys
import warnings

# Set before TensorFlow (C++ INFO/WARNING lines), gRPC and glog-based
# libraries (JAX's XLA) read them; a value the user set wins.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
}

_decided = False  # `defer_library` answers True at most once per process
_deferred = False
_quiet = False  # the command line loaded the library quietly


def _is_command_line():
    argv = sys.argv or [""]
    if os.path.basename(argv[0]) == "transfer":  # the console script
        return True
    # `python -m transfer` imports this package while argv[0] is still "-m";
    # sys.orig_argv says which module runs.
    if argv[0] != "-m":
        return False
    original = list(getattr(sys, "orig_argv", ()))
    for flag, value in zip(original, original[1:], strict=False):
        if flag == "-m":
            return value == "transfer"
    return False


def defer_library():
    """Whether `transfer/__init__` leaves the library for later.

    True once, in the `transfer` command before its arguments are parsed.
    """
    global _decided, _deferred
    if _decided:
        return False
    _decided = True
    _deferred = _is_command_line()
    return _deferred


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


def _has_gpu_device():
    # NVIDIA (/dev/nvidia0...) or AMD ROCm (/dev/kfd): there a failing CUDA
    # probe is news, so its lines stay visible.
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def _quiet_python_logs():
    from absl import logging as absl_logging  # installed with TensorFlow

    absl_logging.set_verbosity(absl_logging.ERROR)
    # Deprecations inside Keras, TensorFlow or NumPy are nothing a command
    # line user can act on; `transfer`'s own warnings stay.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings(
            "ignore", category=category, module=r"(?!transfer(\.|$))"
        )


def load_library(loud=False):
    """Loads the library the command line deferred, quietly unless `loud`.

    Does nothing when the library is already loaded (always the case after
    a plain `import transfer`).

    Args:
        loud: keep every log line, warning and environment variable as is
            (`transfer --verbose`, `--debug`). Defaults to `False`.

    Returns:
        The `transfer` package.
    """
    global _deferred, _quiet
    package = sys.modules["transfer"]
    if not _deferred:
        return package
    _deferred = False
    _quiet = not loud
    muted = contextlib.nullcontext() if loud else _stderr_to_devnull()
    if not loud:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    with muted:
        # The heavy imports themselves, kept out of `--help` (10 s or more).
        import keras  # noqa: F401
        import keras_hub  # noqa: F401
        import tensorflow

        if not loud and not _has_gpu_device():
            # TF logs `failed call to cuInit` at its first device query.
            tensorflow.config.list_physical_devices()
    if not loud:
        _quiet_python_logs()
    # Runs `transfer/__init__` again, now importing every public name.
    return importlib.reload(package)


@contextlib.contextmanager
def native_logs_muted():
    """Mutes file descriptor 2 inside, in the quiet `transfer` command only.

    For native code that logs on every call and that no setting silences
    (the LiteRT interpreter's "Created TensorFlow Lite XNNPACK delegate").
    Elsewhere, and with `--verbose` or `--debug`, it changes nothing.
    """
    if not _quiet:
        yield
        return
    with _stderr_to_devnull():
        yield


def library_attribute(name):
    """`transfer.<name>` asked for while deferred: loads the library first."""
    if name.startswith("__") or not _deferred:
        raise AttributeError(f"module 'transfer' has no attribute {name!r}")
    package = load_library()
    try:
        return package.__dict__[name]
    except KeyError:
        raise AttributeError(
            f"module 'transfer' has no attribute {name!r}"
        ) from None
