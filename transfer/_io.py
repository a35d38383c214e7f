"""Files written so that a crash, a full disk or a reader never sees half.

Every file `transfer` writes into a run directory, a cache or an export goes
through `atomic_write`: a temporary file in the same directory, fsync, then
`os.replace`. The file gets the permissions a plain `open()` would give it
(0644 under the usual umask 022), as Keras's own `model.save` does, so a
colleague can read a shared run.
"""

import hashlib
import json
import logging
import os
import tempfile

logger = logging.getLogger(__name__)


def file_mode():
    """The mode `open()` gives a new file: `0o666` less the umask.

    Files made through `tempfile.mkstemp` start as `0o600`; give them this
    before they replace their target.

    Example:

    >>> file_mode() & 0o111  # never executable; 0o644 under umask 022
    0
    """
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def missing_folders(path):
    """`path` and those of its parents that do not exist yet, deepest first.

    Example:

    >>> [os.path.basename(p) for p in missing_folders("new/inner")]
    ['inner', 'new']
    """
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _nearest_existing(path):
    missing = missing_folders(path)
    return os.path.dirname(missing[-1]) if missing else os.path.abspath(path)


def check_writable(path):
    """Checks that a file (or folder) can be made at `path`, writing nothing.

    The folder that would hold `path`, or its nearest existing parent (where
    the missing folders would be made), must take a new file: a probe file
    is created there and removed. Call it before slow work whose result
    goes to `path`.

    Raises:
        ValueError: `path` or its folder cannot be written; the message
            says why.

    Example:

    >>> check_writable("exports/model.onnx")
    """
    path = os.fspath(path)
    target = os.path.abspath(path)
    folder = _nearest_existing(os.path.dirname(target))

    def refuse(reason):
        raise ValueError(
            f"Cannot write '{path}': {reason}. Choose a writable path. "
            f"Received: path={path!r}"
        )

    if not os.path.isdir(folder):
        refuse(f"'{folder}' is a file, not a folder")
    if os.path.isfile(target) and not os.access(target, os.W_OK):
        refuse("the file exists and is read-only")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as e:
        refuse(f"'{folder}' is not writable ({e.strerror})")
    os.close(fd)
    os.remove(probe)


def atomic_write(path, write_fn, mode="wb"):
    """Writes `path` through a temporary file, fsync and `os.replace`.

    A crash or a full disk leaves the previous file untouched.
    `write_fn(f)` receives the open temporary file.

    Example:

    >>> path = atomic_write("note.txt", lambda f: f.write("hello"), mode="w")
    >>> open(path).read()
    'hello'
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        # mkstemp creates 0600; give the file what open() would give it.
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def probe_writable(directory):
    """Creates `directory` if needed and writes and removes a probe file in
    it; raises `OSError` when it cannot.

    Example:

    >>> probe_writable("some/new/folder")
    """
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)


def write_json(path, data):
    """Writes JSON atomically (temporary file, fsync, `os.replace`).

    Example:

    >>> path = write_json("data.json", {"epochs": 3})
    >>> read_json(path)
    {'epochs': 3}
    """
    return atomic_write(
        path,
        lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str),
        mode="w",
    )


def read_json(path):
    """The JSON object at `path`, or `None` when absent or unreadable.

    Example:

    >>> read_json("no-such-file.json") is None
    True
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("Ignoring unreadable '%s': %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def sha256_file(path, chunk_size=1 << 20):
    """Returns the hex sha256 of a file, read in chunks.

    Example:

    >>> path = atomic_write("empty.bin", lambda f: None)
    >>> sha256_file(path)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
