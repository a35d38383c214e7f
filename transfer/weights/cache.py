"""Where converted weights live, and how files are written and checked."""

import hashlib
import os
import tempfile


def cache_dir(*parts):
    """The user cache directory of `transfer`, created on demand.

    `TRANSFER_CACHE_DIR` wins; otherwise `$XDG_CACHE_HOME/keras-transfer`,
    falling back to `~/.cache/keras-transfer`.
    """
    root = os.environ.get("TRANSFER_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        root = os.path.join(base, "keras-transfer")
    path = os.path.join(root, *parts)
    os.makedirs(path, exist_ok=True)
    return path


def sha256_file(path, chunk_size=1 << 20):
    """Returns the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path, expected, what):
    """Raises `ValueError` unless `path` hashes to `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"The weights file for {what} at '{path}' has sha256 {actual}, "
            f"but {expected} is pinned. The file is corrupt or not the "
            "expected release: delete it and fetch it again. "
            f"Received: sha256={actual}"
        )
    return actual


def atomic_write(path, write_fn, mode="wb"):
    """Writes `path` through a temporary file, fsync and `os.replace`.

    A crash or a full disk leaves the previous file untouched.
    `write_fn(f)` receives the open temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
