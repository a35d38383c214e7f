"""`RunDirLock`: one training process per run directory.

Two runs writing one run directory would interleave checkpoints, logs and
the manifest. `fit_recipe` holds this lock for the whole run; a second run
pointed at the same directory refuses, naming the first one's process.

The lock file `run_dir/.transfer.lock` records the holder's PID, host and
process start time. Where `fcntl` exists (Linux, macOS), the holder also
keeps an exclusive `flock` on it, which the kernel drops when the process
dies, even by SIGKILL; the PID check (`os.kill(pid, 0)`, plus the start
time from `/proc` where there is one, so a recycled PID does not count)
covers systems without `fcntl`. A lock left by a dead process is taken
over with a warning. The file stays, emptied, after release: deleting it
would let a process that opened the old file race one that creates a new
one.
"""

import json
import logging
import os
import socket
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = ".transfer.lock"


class RunDirInUseError(RuntimeError):
    """Another live process is training into the same run directory.

    `fit_recipe` (through `RunDirLock`) raises it before training, so two
    runs never write one run directory.

    Example:

    >>> import os
    >>> os.makedirs("runs/a")
    >>> with transfer.training.lock.RunDirLock("runs/a"):
    ...     # As if another process held the lock: a second holder is refused.
    ...     try:
    ...         transfer.training.lock.RunDirLock("runs/a").acquire()
    ...     except transfer.RunDirInUseError as e:
    ...         print(e)
    'runs/a' is in use by process ... Received: run_dir='runs/a'
    """


def _start_time(pid):
    """The process start time in clock ticks from `/proc`, or `None`."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid, start_time=None):
    """Whether process `pid` runs (and, when given, started at `start_time`)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    if start_time is not None:
        current = _start_time(pid)
        if current is not None and current != start_time:
            return False  # the PID was recycled
    return True


def _read(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def check_free(run_dir):
    """Raises `RunDirInUseError` when a live process holds `run_dir`'s lock.

    Reads only: nothing is created or written, so a run refused here leaves
    `run_dir` as it was. `RunDirLock` checks again when it takes the lock.
    """
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody ever trained here
    try:
        holder = _read(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                RunDirLock(run_dir)._refuse(holder)
            return  # closing the file below drops the shared lock
        if holder and holder.get("pid") != os.getpid() and process_alive(
            holder.get("pid"), holder.get("start")
        ):
            RunDirLock(run_dir)._refuse(holder)
    finally:
        os.close(fd)


class RunDirLock:
    """Holds `run_dir/.transfer.lock` while a run trains into `run_dir`.

    Use it as a context manager; `fit_recipe` does.

    Args:
        run_dir: the run directory, which must exist.

    Raises:
        RunDirInUseError: on entering, when a live process holds the lock.

    Example:

    >>> import os
    >>> os.makedirs("runs/a")
    >>> with transfer.training.lock.RunDirLock("runs/a"):
    ...     os.path.exists("runs/a/.transfer.lock")
    True
    >>> # A second process entering meanwhile gets `RunDirInUseError`.
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fd = None

    def _refuse(self, holder):
        pid = holder.get("pid") if holder else "unknown"
        host = holder.get("host") if holder else "unknown"
        since = holder.get("since") if holder else "unknown"
        raise RunDirInUseError(
            f"'{self.run_dir}' is in use by process {pid} on {host} (since "
            f"{since}). Two runs must not write one run directory: wait for "
            "it to finish, stop it, or pass another run_dir. If that process "
            f"is gone, delete '{self.path}'. Received: run_dir="
            f"{self.run_dir!r}"
        )

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._refuse(_read(fd))
            holder = _read(fd)
            if holder and holder.get("pid") != os.getpid():
                if holder.get("host") != socket.gethostname():
                    # A process on another machine (a shared file system):
                    # neither flock nor os.kill can tell whether it runs.
                    self._refuse(holder)
                if fcntl is None and process_alive(
                    holder.get("pid"), holder.get("start")
                ):
                    self._refuse(holder)
                logger.warning(
                    "Taking over the lock of '%s' from process %s, which is "
                    "no longer running.", self.run_dir, holder.get("pid"),
                )
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": _start_time(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(record).encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # also drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
