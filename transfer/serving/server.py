"""`transfer serve`'s steps: checks, the listening socket, the app, uvicorn.

`check_dependencies`, `check_run_dir` and `bind_socket` need no Keras: the
command runs them first, so a missing extra, a run directory without a
model or a port in use answers in a fraction of a second, before the model
loads. `load_app` loads the run and warms the model up; `listen` and `run`
serve it on the socket already bound, until Ctrl+C.
"""

import errno
import importlib.util
import logging
import os
import socket

import numpy as np

from transfer.training import run_dir as run_dir_lib  # light: no Keras

logger = logging.getLogger(__name__)

# import name -> the package that provides it (the `serve` extra).
DEPENDENCIES = {"starlette": "starlette", "uvicorn": "uvicorn",
                "python_multipart": "python-multipart"}


def check_dependencies():
    """Raises an `ImportError` naming the extra when one is missing."""
    missing = [package for module, package in DEPENDENCIES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(
            "`transfer serve` needs Starlette, uvicorn and python-multipart "
            "(the `serve` extra): pip install \"keras-transfer[serve]\". "
            f"Missing: {', '.join(missing)}"
        )


def check_run_dir(run_dir):
    """Raises `FileNotFoundError` unless `run_dir` holds a trained model.

    A run that has started but not finished (checkpoints, no
    `model.keras` yet) is told apart from a folder that is no run.
    """
    model = run_dir_lib.path(run_dir, run_dir_lib.MODEL)
    if os.path.isfile(model):
        return
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(
            f"No run directory '{run_dir}'. Pass the directory of a "
            f"finished `transfer train` run. Received: run_dir={run_dir!r}"
        )
    started = any(os.path.exists(run_dir_lib.path(run_dir, name)) for name
                  in (run_dir_lib.CHECKPOINTS, run_dir_lib.LOGS,
                      run_dir_lib.CONFIG))
    if started:
        raise FileNotFoundError(
            f"The run in '{run_dir}' has not finished: it has no "
            f"{run_dir_lib.MODEL} yet. Rerun its `transfer train` command "
            "(it resumes) and serve it once it has finished. "
            f"Received: run_dir={run_dir!r}"
        )
    raise FileNotFoundError(
        f"No trained model in '{run_dir}' (looked for {model}). Pass the "
        f"directory of a finished `transfer train` run. "
        f"Received: run_dir={run_dir!r}"
    )


def bind_socket(host, port):
    """A TCP socket bound to `(host, port)`, not yet listening.

    Bound here, before the model loads, so a port in use is said at once;
    uvicorn then listens on this very socket (no other process can take
    the port in between). Port `0` picks a free port
    (`sock.getsockname()[1]` says which).

    Raises:
        ValueError: the port is out of range, in use or privileged, or the
            host is not an address of this machine.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not (
        0 <= port <= 65535
    ):
        raise ValueError(f"The port must be from 0 to 65535 (0: any free "
                         f"port). Received: port={port!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ValueError(
            f"Cannot listen on host {host!r}: {e.strerror}. Pass an address "
            "of this machine, e.g. --host 127.0.0.1 (this machine only) or "
            f"--host 0.0.0.0 (every interface). Received: host={host!r}"
        ) from None
    sock = socket.socket(family, kind, proto)
    # Lets a restarted server take its port back from TIME_WAIT; a port
    # another process listens on still fails with EADDRINUSE.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(
                f"Port {port} on {host} is already in use (another "
                "`transfer serve`, or another server). Pass a free port "
                f"with --port, e.g. --port {port + 1 if port < 65535 else 8000}"
                f", or stop the process that holds it (`ss -ltnp 'sport = "
                f":{port}'` names it). Received: host={host!r}, port={port}"
            ) from None
        if e.errno == errno.EACCES:
            raise ValueError(
                f"Port {port} needs administrator rights on this machine: "
                f"pass a port from 1024 up, e.g. --port 8000. "
                f"Received: port={port}"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ValueError(
                f"{host} is not an address of this machine: pass "
                "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 "
                f"(every interface). Received: host={host!r}"
            ) from None
        raise
    return sock


def listen(sock, backlog=2048):
    """Starts queueing connections on the bound `sock`.

    Called once the app is ready, before its URL is announced: a client
    that connects before uvicorn's loop runs waits in the queue instead of
    being refused. uvicorn listens on the same socket again, harmlessly.
    """
    sock.listen(backlog)


def load_app(run_dir, **limits):
    """The app of the run's model (`create_app`), warmed up.

    One prediction on a blank image runs first: the first request does
    not pay the model's trace or compile, and a model that cannot predict
    fails here, before the server starts.

    Args:
        run_dir: a finished run directory.
        **limits: `create_app`'s keyword arguments (`max_request_bytes`,
            `max_image_pixels`, `max_batch_size`, `max_delay`).

    Returns:
        The Starlette application.
    """
    from transfer import prediction  # lazy: Keras, after the quick checks
    from transfer import workflow  # lazy: Keras, after the quick checks
    from transfer.serving.app import create_app  # optional: starlette

    model, _ = workflow.load_run(run_dir)
    app = create_app(model, title=os.path.basename(os.path.normpath(run_dir)),
                     **limits)
    size = int(model.input_shape[1])
    prediction.image_probabilities(model, np.zeros((1, size, size, 3),
                                                   "float32"))
    return app


def run(app, sock, *, access_log=False):
    """Serves `app` on the bound socket `sock` with uvicorn until stopped.

    Ctrl+C (SIGINT) or SIGTERM stops it gracefully: requests in flight are
    answered, then the batcher's thread ends. After Ctrl+C it returns;
    after SIGTERM uvicorn ends the process with that signal.
    """
    import uvicorn  # optional: the serve extra

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=access_log,
        lifespan="on", timeout_graceful_shutdown=10,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn raises Ctrl+C again once it has shut down gracefully:
        # the normal way to stop a server, not a failure.
        logger.info("Stopped by Ctrl+C.")
    finally:
        sock.close()
