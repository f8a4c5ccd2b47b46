"""One writer per output: an exclusive advisory lock held for the whole run.

A checkpoint directory (`--save`, the tools' `--save-dir`) is locked through `<dir>/.megaclap.lock`,
a dataset prefix (preprocessing and merge outputs) through `<prefix>.lock` beside it. The lock is
`fcntl.flock` on that file: the OS drops it when the owning process ends, however it ends, so a
crashed or killed run never leaves a stale lock behind. The file names its owner (pid, host,
start time, command) for the one-line refusal a second run gets. The owner removes the file when
it releases the lock; a process that locked a file removed under it retries on the new one.

flock is per open file description, so within a multi-rank job only one process can hold it:
training takes it on global rank 0 for the job (megaclap.training.preflight). Where the file
system does not support flock (ENOLCK, some NFS mounts without a lock daemon) a warning says the
output is unprotected and the run goes on.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
import warnings
from typing import Optional

from megaclap.errors import UserError

DIR_LOCK = ".megaclap.lock"


class OutputInUse(UserError):
    """Another live run holds the output this run would write."""


def dir_lock_path(directory: str) -> str:
    return os.path.join(directory, DIR_LOCK)


def prefix_lock_path(prefix: str) -> str:
    return prefix + ".lock"


def owner_line() -> str:
    command = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return (f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}, running {command}")


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class OutputLock:
    """Exclusive ownership of `what` (e.g. "--save /ckpt") through the lock file `path`.

        with OutputLock(prefix_lock_path(out), f"--output-prefix {out}"):
            ...write the output...
    """

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self.fd: Optional[int] = None
        self.acquired = False  # True from acquire() to release() (also where flock is unsupported)

    def acquire(self) -> "OutputLock":
        if self.acquired:
            return self
        self.acquired = True
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self.acquired = False
                raise UserError(f"{self.what}: cannot create the lock file {self.path}: {e.strerror}; "
                                "point it at a writable location") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = os.pread(fd, 512, 0).decode(errors="replace").strip() or "owner unknown"
                os.close(fd)
                self.acquired = e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                if not self.acquired:
                    raise OutputInUse(f"{self.what} is in use by another run ({owner}; lock {self.path}): "
                                      "wait for that run to end, or write somewhere else") from None
                warnings.warn(f"{self.what}: cannot lock {self.path} ({e.strerror}); a second run writing "
                              "there at the same time would not be refused")
                return self
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous owner removed the file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, (owner_line() + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        self.acquired = False
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_dir(directory: str, what: str) -> OutputLock:
    """Create `directory` if needed and lock it for this process (OutputInUse if another run has it)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot create the directory: {e.strerror}; point it at a writable "
                        "location") from e
    return OutputLock(dir_lock_path(directory), what).acquire()


def lock_prefix(prefix: str, what: str) -> OutputLock:
    """Lock a dataset prefix (its directory is created if needed)."""
    folder = os.path.dirname(prefix)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"{what}: cannot create {folder}: {e.strerror}") from e
    return OutputLock(prefix_lock_path(prefix), what).acquire()
