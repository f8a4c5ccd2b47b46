"""Known problems after start-up: one line for the user, the traceback in a file.

Modules raise UserError (or a subclass) for problems the user can fix: a corrupt .bin/.idx,
an empty dataset, a bad checkpoint, a missing tokenizer file, a full disk. The entry point
(megaclap.training.pretrain.main) hands any exception to `report`, which prints the message
once for the whole job (the first rank to claim it in the process group's store), writes
the traceback to a file, and returns exit code 2; the process then exits so torchrun tears
the job down. Ranks that fail only because a peer exited stay quiet.
"""
from __future__ import annotations

import datetime
import errno
import os
import sys
import tempfile
import traceback
from typing import Optional

EXIT_CODE = 2
_KEY = "megaclap/user_error_reported"
# OSErrors the user fixes (disk full, quota, permissions, read-only file system)
KNOWN_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)


class UserError(Exception):
    """A problem the user can fix; the message names it and the fix, in one line."""


class UserValueError(UserError, ValueError):
    """A bad value in an input (file contents, flag combination found after start-up)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """An input file named by a flag does not exist."""


def _store():
    """The default process group's store, with a short timeout; None without a group."""
    try:
        import torch.distributed as dist
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(datetime.timedelta(seconds=5))
        return store
    except Exception:  # no store reachable: behave as a single process
        return None


def _claim(store) -> bool:
    """True on the first rank of the job to report (always True without a store)."""
    if store is None:
        return True
    try:
        return store.add(_KEY, 1) == 1
    except Exception:
        return True


def _peer_reported(store) -> bool:
    if store is None:
        return False
    try:
        return store.add(_KEY, 0) > 0
    except Exception:
        return False


def traceback_file(exc: BaseException, rank: int) -> Optional[str]:
    """Write exc's traceback to a file in the temp directory; returns its path (None if that fails)."""
    path = os.path.join(tempfile.gettempdir(), f"megaclap-error-{os.getpid()}-rank{rank}.txt")
    try:
        with open(path, "w") as f:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
    except OSError:
        return None
    return path


def report(exc: BaseException, rank: int = 0, verbose: bool = False) -> int:
    """Handle an exception that ended this rank: returns EXIT_CODE, or re-raises an unknown error.

    UserError: the first rank prints `megaclap: error: <message>` and where the traceback is
    (printed too with --verbose-errors); the others print nothing. Any other exception is
    re-raised (a bug: its traceback matters), unless a peer already reported a UserError, in
    which case it is a consequence of that peer exiting and stays quiet."""
    store = _store()
    if isinstance(exc, OSError) and exc.errno in KNOWN_ERRNOS and not isinstance(exc, UserError):
        known = UserError(f"{exc}; free space or fix the permissions there")
        known.__cause__ = exc
        exc = known
    if not isinstance(exc, UserError):
        if _peer_reported(store):
            traceback_file(exc, rank)
            return EXIT_CODE
        raise exc
    path = traceback_file(exc, rank)
    if _claim(store):
        where = f"traceback in {path}" if path else "no traceback file"
        print(f"megaclap: error: {exc} ({where}; --verbose-errors prints it)", file=sys.stderr, flush=True)
        if verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return EXIT_CODE
