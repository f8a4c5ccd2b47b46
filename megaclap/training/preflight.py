"""Start-up checks of a training job's outputs, before anything is built or trained:

- `--save`, `--data-cache-path` and `--tensorboard-dir` exist (created if needed) and are
  writable, on every rank that writes there (all ranks for the first two, the logging rank for
  TensorBoard), so a bad path fails now and not at the first save;
- the `--save` directory belongs to this job: global rank 0 holds its lock (megaclap.locks) for
  the whole run. flock is per process, so the other ranks of the job do not lock: they write
  only between rank 0's barriers. A second job with the same `--save` is refused in one line.
  Under the lock, unfinished saves of dead runs (iter_N.tmp*) are removed, and this job's
  temporary names carry a tag of its own (iter_N.tmp-<tag>), agreed from rank 0.

Every rank takes part in one all_gather of the problems found, and every rank raises the same
first one, so no rank is left waiting in a collective for a rank that stopped.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Optional

import torch.distributed as dist

from megaclap.checkpoint import format as fmt
from megaclap.errors import UserError
from megaclap.locks import OutputLock, lock_dir


@dataclass
class Outputs:
    """What the checks leave: the --save lock (rank 0) and the tag for temporary names."""

    tag: str = ""
    lock: Optional[OutputLock] = None
    notes: list = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def writable(directory: str, flag: str) -> Optional[str]:
    """None if directory exists (or was created) and a file can be written in it; else the problem."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".megaclap-write-test-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return (f"{flag} {directory} is not a writable directory ({e.strerror or e}); point {flag} at one "
                "(checked at start-up, before training)")
    return None


def _local_problems(cfg, pstate) -> list:
    t = cfg.train
    wanted = (("--save", t.save, True), ("--data-cache-path", cfg.data.data_cache_path, True),
              ("--tensorboard-dir", t.tensorboard_dir, pstate.is_logging_rank))
    return [p for p in (writable(path, flag) for flag, path, mine in wanted if path and mine) if p]


def _agree(mine: list, tag: str, pstate) -> tuple[list, str]:
    """(problems of every rank, in rank order; rank 0's tag) on every rank."""
    if not dist.is_initialized() or pstate.world_size == 1:
        return mine, tag
    gathered = [None] * pstate.world_size
    dist.all_gather_object(gathered, (mine, tag))
    return [p for problems, _ in gathered for p in problems], gathered[0][1]


def claim_outputs(cfg, pstate) -> Outputs:
    """Run the checks above on every rank; raise the job's first problem (a UserError) on all."""
    problems, out = _local_problems(cfg, pstate), Outputs()
    save = cfg.train.save
    if save and pstate.rank == 0 and not problems:
        try:
            out.lock = lock_dir(save, f"--save {save}")
            out.notes = fmt.clear_unfinished(save)
            out.tag = uuid.uuid4().hex[:8]
        except UserError as e:
            problems.append(str(e))
    problems, out.tag = _agree(problems, out.tag, pstate)
    if problems:
        out.release()
        raise UserError(problems[0])
    return out
