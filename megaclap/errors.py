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
import re
import sys
import tempfile
import traceback
from typing import Callable, Optional, Sequence

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


# what gloo and NCCL say when a peer process died, closed its sockets or stopped answering
_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
               "Connection refused", "NCCL communicator was aborted", "Watchdog caught collective operation")


def peer_failure(exc: BaseException) -> Optional[UserError]:
    """A UserError for a collective or p2p that failed because another rank died or hung
    (gloo: RuntimeError naming the closed connection or the timeout; NCCL: DistBackendError);
    None for anything else."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc).strip()
    try:
        import torch.distributed as dist
        dist_error = isinstance(exc, (dist.DistBackendError, dist.DistNetworkError))
    except (ImportError, AttributeError):
        dist_error = False
    if not dist_error and not any(sign in text for sign in _PEER_SIGNS):
        return None
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(exc).__name__)  # gloo's [file:line]
    first = first.split(". This is typically caused")[0]  # gloo's advice; ours follows
    known = UserError(f"a peer process of this job died or stopped answering ({first[:200]}); the job's first "
                      "error (another rank's output or log) says why; if that rank is only slow, raise "
                      "--distributed-timeout-minutes")
    known.__cause__ = exc
    return known


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
    if not isinstance(exc, UserError):  # PeerTimeout (a UserError) already names the stage and the peer
        exc = peer_failure(exc) or exc
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


def run_tool(name: str, main: Callable, argv: Optional[Sequence[str]] = None, known: tuple = ()) -> int:
    """Run a tool's main(argv): a known problem (UserError, OSError, or one of `known`) prints
    `<name>: error: <message> (traceback in <file>)` on one line and returns EXIT_CODE; 0 on
    success. Anything else is a bug and keeps its traceback."""
    try:
        main(argv)
    except (UserError, OSError, *known) as e:
        message = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip().replace("\n", "; ")
        path = traceback_file(e, 0)
        where = f"traceback in {path}" if path else "no traceback file"
        print(f"{name}: error: {message} ({where})", file=sys.stderr, flush=True)
        return EXIT_CODE
    return 0
