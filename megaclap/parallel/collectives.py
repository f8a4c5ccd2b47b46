"""Paired tensor-parallel collectives: each forward's backward is its dual.

    copy_to_tp      fwd: identity        bwd: all-reduce
    reduce_from_tp  fwd: all-reduce      bwd: identity
    gather_from_tp  fwd: all-gather(-1)  bwd: split(-1)
    scatter_to_tp   fwd: split(-1)       bwd: all-gather(-1)

All return their input unchanged when the group has one rank (tp=1 is plain PyTorch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megaclap.parallel.emulate import LocalMember
from megaclap.parallel.state import GroupInfo


def _all_reduce(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    x = x.contiguous()
    dist.all_reduce(x, group=tp.group)
    return x


def _split_last(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    return x.chunk(tp.size, dim=-1)[tp.rank].contiguous()


def _gather_last(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(tp.size)]
    dist.all_gather(parts, x.contiguous(), group=tp.group)
    return torch.cat(parts, dim=-1)


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g.clone(), ctx.tp), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp, inplace):
        if inplace and x.is_contiguous():  # no activation copy: x is consumed
            ctx.mark_dirty(x)
            dist.all_reduce(x, group=tp.group)
            return x
        return _all_reduce(x.clone(), tp)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _gather_last(x, tp)

    @staticmethod
    def backward(ctx, g):
        return _split_last(g, ctx.tp), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return _split_last(x, tp)

    @staticmethod
    def backward(ctx, g):
        return _gather_last(g, ctx.tp), None


def _trivial(tp) -> bool:
    return tp is None or tp.size == 1


def copy_to_tp(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    return x if _trivial(tp) else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: GroupInfo, inplace: bool = False) -> torch.Tensor:
    """inplace=True: all-reduce x's own storage. Only for a fresh, non-view x that nothing saved
    for backward (a matmul or masked_fill output: their backward does not read their output)."""
    return x if _trivial(tp) else _ReduceFromTP.apply(x, tp, inplace and x._base is None)


def gather_from_tp(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    return x if _trivial(tp) else _GatherFromTP.apply(x, tp)


def scatter_to_tp(x: torch.Tensor, tp: GroupInfo) -> torch.Tensor:
    return x if _trivial(tp) else _ScatterToTP.apply(x, tp)


# --- pipeline-group collectives: a process group, or an emulated pipeline's in-process group ---
_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, group, op: str = "sum") -> torch.Tensor:
    """In place over `group` (a GroupInfo's group: None, a process group, or a LocalMember of an
    emulated pipeline, megaclap.parallel.emulate); op is 'sum', 'max' or 'min'."""
    if group is None:
        return tensor
    if isinstance(group, LocalMember):
        return group.all_reduce(tensor, op)
    dist.all_reduce(tensor, op=_OPS[op], group=group)
    return tensor


def ordered_sum(value: torch.Tensor, info: GroupInfo) -> torch.Tensor:
    """The sum of a small tensor over a group, added in rank order: the same bits on any backend
    and in an emulated pipeline (an all-reduce's tree depends on the backend and the size)."""
    if info.group is None:
        return value
    if isinstance(info.group, LocalMember):
        parts = info.group.gather(value.detach().clone())
    else:
        parts = [torch.empty_like(value) for _ in range(info.size)]
        dist.all_gather(parts, value.contiguous(), group=info.group)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def gather_objects(obj, info: GroupInfo) -> list:
    """Every member's picklable obj, in rank order, on every member of the group."""
    if info.group is None:
        return [obj]
    if isinstance(info.group, LocalMember):
        return info.group.gather(obj)
    out = [None] * info.size
    dist.all_gather_object(out, obj, group=info.group)
    return out


def world_all_reduce(tensor: torch.Tensor, pstate, op: str = "sum") -> torch.Tensor:
    """In place over every rank of the job (an emulated pipeline's stages, then its processes)."""
    local = pstate.groups.get("world")
    if local is not None:
        all_reduce(tensor, local.group, op)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def barrier(pstate) -> None:
    """Every rank of the job (an emulated pipeline's stages, then its processes) reaches this point."""
    local = pstate.groups.get("world")
    if local is not None:
        local.group.barrier()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if local is not None:
        local.group.barrier()  # no stage goes on before the processes met


def max_over_pp(values: torch.Tensor, pstate) -> torch.Tensor:
    """Element-wise max of a small host tensor over the pipeline group (every stage calls it);
    used for per-stage counters the logging rank prints."""
    if pstate.pp.group is None:
        return values
    dev = values.to(pstate.device)
    all_reduce(dev, pstate.pp.group, "max")
    return dev.cpu()
