"""Files written so that a crash, a full disk or a reader never sees half.

Every file `transfer` writes into a run directory, a cache or an export goes
through `atomic_write`: a temporary file in the same directory, fsync, then
`os.replace`. The file gets the permissions a plain `open()` would give it
(0644 under the usual umask 022), as Keras's own `model.save` does, so a
colleague can read a shared run.
"""

import errno
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def _free_bytes(directory):
    try:
        stat = os.statvfs(directory)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return stat.f_bavail * stat.f_frsize


def write_error(error, path, size=None):
    """`error` (an `OSError`) with a message that names `path` and the fix.

    A full disk (`ENOSPC`, `EDQUOT`) or a refused write (`EACCES`, `EPERM`,
    `EROFS`) comes back as an `OSError` with the same `errno`, whose message
    says which file, how many bytes it needed (when `size` is known), how
    many are free, and what to do; other errors come back unchanged.

    Example:

    >>> str(write_error(OSError(28, "No space left on device"), "a/b.npz", 10))
    "[Errno 28] No space left on device: cannot write 'a/b.npz' (10 bytes ..."
    """
    if getattr(error, "transfer_explained", False) or error.errno not in (
        _NO_SPACE + _NO_PERMISSION
    ):
        return error
    directory = os.path.dirname(os.path.abspath(path))
    if error.errno in _NO_SPACE:
        free = _free_bytes(directory)
        needed = f"{size:,} bytes needed" if size else "size unknown"
        if free is not None:
            needed += f", {free:,} bytes free there"
        message = (
            f"No space left on device: cannot write '{path}' ({needed}). "
            f"Free space on the disk holding '{directory}', or write to "
            "another disk; then run the same call again: the file that was "
            "there before is intact, and an interrupted fit_recipe run "
            "resumes from its last backup"
        )
    else:
        message = (
            f"{os.strerror(error.errno)}: cannot write '{path}'. Make "
            f"'{directory}' writable for this user (e.g. chmod u+w), or write "
            "somewhere else; then run the same call again"
        )
    explained = OSError(error.errno, message)
    explained.filename = path
    explained.transfer_explained = True
    return explained


def atomic_write(path, write_fn, mode="wb", size=None):
    """Writes `path` through a temporary file, fsync and `os.replace`.

    A crash or a full disk leaves the previous file untouched.
    `write_fn(f)` receives the open temporary file. A full disk or a
    refused write raises `OSError` naming `path`, the bytes needed (`size`,
    when given) and the fix (`write_error`).

    Example:

    >>> path = atomic_write("note.txt", lambda f: f.write("hello"), mode="w")
    >>> open(path).read()
    'hello'
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:
        raise write_error(e, path, size) from e
    try:
        # mkstemp creates 0600; give the file what open() would give it.
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path, size) from e
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
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    return atomic_write(
        path, lambda f: f.write(text), mode="w", size=len(text.encode())
    )


def write_text(path, text):
    """Writes `text` (UTF-8) atomically; returns its sha256.

    Example:

    >>> write_text("notes.txt", "hi")[:8]
    '8f434346'
    """
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), size=len(data))
    return hashlib.sha256(data).hexdigest()


def probe_nearest(path):
    """Checks that `path` could be written without creating anything.

    Probes `path` itself when it is an existing directory (a probe file is
    written and removed, so its contents stay as they were), else the
    nearest existing folder above it, where `path` would be created.

    Raises:
        OSError: that folder cannot be written.
    """
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        parent = os.path.dirname(current)
        if parent == current or os.path.exists(current):
            break
        current = parent
    probe_writable(current)


class DuplicateKeyError(ValueError):
    """A JSON or YAML mapping names one key twice."""


def _refuse_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


def loads_json_strict(text):
    """`json.loads`, refusing a mapping that names one key twice.

    Raises:
        DuplicateKeyError: with the key (and `line`, the 1-based line of its
            second occurrence when found).

    Example:

    >>> loads_json_strict('{"a": 1}')
    {'a': 1}
    """
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except DuplicateKeyError as e:
        key = e.args[0]
        lines = [
            number for number, line in enumerate(text.splitlines(), 1)
            if json.dumps(key) in line
        ]
        error = DuplicateKeyError(key)
        error.line = lines[1] if len(lines) > 1 else None
        error.lines = lines
        raise error from None


def read_json_checked(path):
    """The JSON object at `path`; `None` when absent.

    Raises:
        ValueError: the file exists but is not a readable JSON object; the
            message names it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(
            f"'{path}' is unreadable ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"'{path}' does not hold a JSON object. Received: "
            f"{type(data).__name__}"
        )
    return data


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
