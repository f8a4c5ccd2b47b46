"""ParallelState: the rank grid and its process groups, passed explicitly (never a global).

Rank order is Megatron's tp-dp-pp: tp varies fastest, then dp, then pp.

    global_rank = tp_rank + tp * (dp_rank + dp * pp_rank)

so a tensor-parallel group is tp contiguous ranks (one node), and pipeline stages span nodes.
Groups: tp, dp, pp, mp (tp x pp: the ranks holding one model replica, for the grad norm) and
the embedding group {first stage, last stage} for tied embeddings.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class GroupInfo:
    """One process group as seen from this rank; group is None when the size is 1."""

    group: Optional[dist.ProcessGroup]
    size: int
    rank: int
    ranks: tuple


class ParallelState:
    """The tp x dp x pp grid. Answers rank, group, is_first_stage, is_last_stage, neighbours."""

    def __init__(self, tp: int, pp: int, world_size: int, rank: int, device: torch.device,
                 timeout_minutes: float = 10.0):
        if world_size % (tp * pp):
            raise ValueError(f"world size {world_size} is not divisible by tp {tp} x pp {pp}")
        self.tp_size, self.pp_size, self.world_size, self.rank = tp, pp, world_size, rank
        self.dp_size = world_size // (tp * pp)
        self.device = device
        self.timeout = datetime.timedelta(minutes=timeout_minutes)
        self.tp_rank = rank % tp
        self.dp_rank = (rank // tp) % self.dp_size
        self.pp_rank = rank // (tp * self.dp_size)
        self._build_groups()

    def global_rank(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp_size * (dp_rank + self.dp_size * pp_rank)

    def _grid(self):
        """Yield (kind, ranks) for every group of every kind, in the same order on all ranks."""
        tp, dp, pp = self.tp_size, self.dp_size, self.pp_size
        for d in range(dp):
            for p in range(pp):
                yield "tp", tuple(self.global_rank(t, d, p) for t in range(tp))
        for t in range(tp):
            for p in range(pp):
                yield "dp", tuple(self.global_rank(t, d, p) for d in range(dp))
        for t in range(tp):
            for d in range(dp):
                yield "pp", tuple(self.global_rank(t, d, p) for p in range(pp))
                ends = sorted({self.global_rank(t, d, 0), self.global_rank(t, d, pp - 1)})
                yield "embd", tuple(ends)
        for d in range(dp):
            yield "mp", tuple(self.global_rank(t, d, p) for p in range(pp) for t in range(tp))

    def _build_groups(self) -> None:
        self.groups = {}
        distributed = dist.is_available() and dist.is_initialized() and self.world_size > 1
        for kind, ranks in self._grid():
            group = None
            if distributed and len(ranks) > 1:
                # every rank must call new_group for every group, in the same order
                group = dist.new_group(list(ranks), timeout=self.timeout)
            if self.rank in ranks:
                self.groups[kind] = GroupInfo(group, len(ranks), ranks.index(self.rank), ranks)

    # --- accessors -------------------------------------------------------------------
    @property
    def tp(self) -> GroupInfo:
        return self.groups["tp"]

    @property
    def dp(self) -> GroupInfo:
        return self.groups["dp"]

    @property
    def pp(self) -> GroupInfo:
        return self.groups["pp"]

    @property
    def mp(self) -> GroupInfo:
        return self.groups["mp"]

    @property
    def embedding(self) -> GroupInfo:
        return self.groups["embd"]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def next_rank(self) -> Optional[int]:
        """Global rank of the next pipeline stage (same tp and dp rank), or None."""
        return None if self.is_last_stage else self.global_rank(self.tp_rank, self.dp_rank, self.pp_rank + 1)

    @property
    def prev_rank(self) -> Optional[int]:
        return None if self.is_first_stage else self.global_rank(self.tp_rank, self.dp_rank, self.pp_rank - 1)

    @property
    def is_logging_rank(self) -> bool:
        """The rank that prints the log line: last stage, tp rank 0, dp rank 0 (as Megatron)."""
        return self.is_last_stage and self.tp_rank == 0 and self.dp_rank == 0

    def __repr__(self) -> str:
        return (f"ParallelState(rank={self.rank}/{self.world_size}, tp={self.tp_rank}/{self.tp_size}, "
                f"dp={self.dp_rank}/{self.dp_size}, pp={self.pp_rank}/{self.pp_size}, device={self.device})")


def pick_device(local_rank: int) -> torch.device:
    """CUDA device local_rank when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _restart_store(rank: int, world_size: int, timeout: datetime.timedelta):
    """Under torchrun --max-restarts the agent's store outlives a failed attempt; keys of the
    dead workers (group addresses) would be read back by the new ones and hang them. Each
    attempt therefore gets its own key prefix. None outside torchrun (plain env:// init)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        return None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent and rank == 0, timeout=timeout, multi_tenant=not agent)
    return dist.PrefixStore(f"megaclap/attempt_{restart}", store)


def check_one_device_per_rank(backend: str, world_size: int) -> None:
    """NCCL needs a CUDA device of its own per process: refuse, before NCCL's own "Duplicate GPU
    detected" deep in the launch, a node with more processes than devices."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    devices = torch.cuda.device_count()
    if backend == "nccl" and world_size > 1 and local > devices:
        from megaclap.errors import UserError
        raise UserError(f"{local} processes on this node but {devices} CUDA device(s): NCCL needs one "
                        "device per process; on one GPU run the pipeline in one process with "
                        "--pp-emulate (NPROC_PER_NODE=1), or launch at most one process per device")


def initialize_distributed(tp: int, pp: int, timeout_minutes: float = 10.0,
                           backend: Optional[str] = None,
                           device: Optional[torch.device] = None) -> ParallelState:
    """Join the torchrun job (env:// rendezvous) and build the grid; world size 1 needs no torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device or pick_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        default = "nccl" if device.type == "cuda" else "gloo"
        check_one_device_per_rank(backend or default, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout,
                                store=_restart_store(rank, world_size, timeout),
                                device_id=device if backend == "nccl" else None)
    return ParallelState(tp, pp, world_size, rank, device, timeout_minutes)
