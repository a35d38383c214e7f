"""Where converted weights live, and how their hashes are checked."""

import os

from transfer._io import sha256_file


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
