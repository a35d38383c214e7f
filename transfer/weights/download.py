"""Downloads that fail fast and say exactly what is missing."""

import contextlib
import os
import socket
import urllib.error

from transfer import _io

# keras.utils.get_file has no timeout of its own: without one a blocked
# network can stall a run for minutes before the first epoch.
NETWORK_TIMEOUT_SECONDS = 30


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable right now.

    Building a backbone with `weights="imagenet"` raises it when the file
    is not cached and the download fails (offline, a firewall): the message
    names where it looked and how to fetch the weights. It is a
    `FileNotFoundError`, so code catching that handles it too.

    Example:

    >>> # What a failed download inside `network_guard` turns into (here a
    >>> # simulated timeout, so that nothing touches the network):
    >>> try:
    ...     with transfer.weights.download.network_guard(
    ...             "efficientnet_b0", [], "Run it online once."):
    ...         raise TimeoutError("no network")
    ... except transfer.WeightsUnavailableError as e:
    ...     print(isinstance(e, FileNotFoundError))
    ...     print(e)
    True
    Pretrained weights for backbone 'efficientnet_b0' are not cached and
    could not be downloaded (no network). Looked in: ... Run it online once.
    Or pass weights=None to train from random init.
    """


def keras_cache_dir(subdir="models"):
    """Where `keras.utils.get_file` caches files (`$KERAS_HOME/<subdir>`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return os.path.join(home, subdir)


def cached_keras_file(file_names):
    """The first of `file_names` present in the Keras cache, or None."""
    for places in (keras_cache_dir(), os.path.join("/tmp", ".keras", "models")):
        for file_name in file_names:
            path = os.path.join(places, file_name)
            if os.path.exists(path):
                return path
    return None


def _is_network_error(error):
    if isinstance(error, (urllib.error.URLError, TimeoutError, socket.error)):
        return True
    return "URL fetch failure" in str(error)


@contextlib.contextmanager
def network_guard(backbone, file_names, fetch_hint):
    """Turns a failed weights download into a `WeightsUnavailableError`.

    Args:
        backbone: the backbone name, for the message.
        file_names: cache file names that would satisfy the download.
        fetch_hint: one sentence on how to get the weights.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_SECONDS)
    try:
        yield
    except Exception as e:
        if not _is_network_error(e):
            raise
        looked = [
            os.path.join(d, f)
            for d in (keras_cache_dir(), "/tmp/.keras/models")
            for f in (file_names or ["<weights file>"])
        ]
        raise WeightsUnavailableError(
            f"Pretrained weights for backbone '{backbone}' are not cached and "
            f"could not be downloaded ({e}). Looked in: {', '.join(looked)}. "
            f"{fetch_hint} Or pass weights=None to train from random init."
        ) from e
    finally:
        socket.setdefaulttimeout(previous)


def describe_file(path, weights, source):
    """The manifest entry for a weights file: name, path and sha256."""
    return {
        "weights": weights,
        "source": source,
        "path": os.path.abspath(path),
        "sha256": _io.sha256_file(path),
    }
