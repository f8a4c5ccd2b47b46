"""Gradient reductions after the last microbatch: data-parallel average, tied-embedding sum
over the embedding group, global norm over model-parallel ranks, clipping, overflow check."""
from __future__ import annotations

import torch
import torch.distributed as dist

BUCKET_BYTES = 32 * 2**20


def _buckets(tensors: list[torch.Tensor]):
    bucket, size = [], 0
    for t in tensors:
        bucket.append(t)
        size += t.numel() * t.element_size()
        if size >= BUCKET_BYTES:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def all_reduce_coalesced(tensors: list[torch.Tensor], group, average_over: int = 1) -> None:
    """Sum (then divide) tensors in place over a group, in flat buckets of one dtype."""
    if group is None or not tensors:
        return
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for same in by_dtype.values():
        for bucket in _buckets(same):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, group=group)
            if average_over > 1:
                flat.div_(average_over)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()


def ensure_grads(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter gets a grad tensor (zeros where no microbatch touched it)."""
    grads = []
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


def sync_grads(stage, pstate) -> None:
    """dp average of every grad; sum of the tied word-embedding grads of first and last stage."""
    all_reduce_coalesced(ensure_grads(stage), pstate.dp.group, pstate.dp.size)
    if stage.tied and pstate.pp_size > 1 and (stage.pre_process or stage.post_process):
        weight = stage.embedding.word_embeddings.weight if stage.pre_process else stage.output_layer.weight
        if pstate.embedding.group is not None:
            dist.all_reduce(weight.grad, group=pstate.embedding.group)


def _counts_for_norm(stage, name: str, p: torch.Tensor, tp_rank: int) -> bool:
    """Count each logical parameter once: replicated tensors on tp rank 0 only, tied copy never."""
    if stage.is_tied_copy(name):
        return False
    return getattr(p, "tp_partition", None) is not None or tp_rank == 0


def clip_grad_norm(stage, pstate, max_norm: float) -> float:
    """Global L2 norm over all model-parallel ranks; scale grads when above max_norm (>0)."""
    sq = torch.zeros((), dtype=torch.float32, device=pstate.device)
    for name, p in stage.named_parameters():
        if p.grad is not None and _counts_for_norm(stage, name, p, pstate.tp_rank):
            sq += p.grad.float().pow(2).sum()
    if pstate.mp.group is not None:
        dist.all_reduce(sq, group=pstate.mp.group)
    norm = sq.sqrt().item()
    if max_norm > 0 and norm > max_norm:
        coeff = max_norm / (norm + 1e-6)
        grads = [p.grad for p in stage.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, coeff)
    return norm


def found_inf_or_nan(stage, pstate) -> bool:
    """True on every rank if any rank's grads have an inf or nan (checked before stepping)."""
    flag = torch.zeros((), dtype=torch.float32, device=pstate.device)
    for p in stage.parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            flag.fill_(1.0)
            break
    if pstate.mp.group is not None:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=pstate.mp.group)
    return bool(flag.item())
