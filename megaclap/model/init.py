"""Megatron-style initialisation that can be independent of the parallel layout.

Each parameter is drawn from its own generator seeded by (seed, global name). With
master=True (--use-cpu-initialization) the full tensor is drawn on CPU and this rank's
shard cut from it, so every tp x pp layout starts from the same weights; otherwise only
the shard is drawn (seeded by the tp rank too), which is cheaper for large models.
Vocabulary padding rows start at zero.
"""
from __future__ import annotations

import math
import zlib

import torch


def _generator(seed: int, name: str, tp_rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) + 7919 * tp_rank) % 2**63)


def full_shape(p: torch.Tensor, tp_size: int) -> list[int]:
    shape = list(p.shape)
    if getattr(p, "tp_partition", None) is not None:
        shape[p.tp_partition[0]] *= tp_size
    return shape


def shard(full: torch.Tensor, partition, tp_size: int, tp_rank: int) -> torch.Tensor:
    """This rank's shard of a master tensor; stride s: s blocks along dim, a chunk of each."""
    if partition is None or tp_size == 1:
        return full
    dim, stride = partition
    blocks = full.chunk(stride, dim=dim)
    return torch.cat([b.chunk(tp_size, dim=dim)[tp_rank] for b in blocks], dim=dim)


def _draw(shape, std: float, gen: torch.Generator, vocab_rows) -> torch.Tensor:
    if vocab_rows is None:
        return torch.randn(shape, generator=gen) * std
    full = torch.zeros(shape)
    full[:vocab_rows] = torch.randn([vocab_rows] + list(shape[1:]), generator=gen) * std
    return full


@torch.no_grad()
def init_stage(stage, seed: int, tp_size: int, tp_rank: int, master: bool = True) -> None:
    """Fill every parameter of a GPTStage in place."""
    cfg = stage.cfg
    stds = {"normal": cfg.init_method_std, "scaled_normal": cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers)}
    for name, p in stage.named_parameters():
        kind = getattr(p, "init_kind", "normal")
        if kind in ("zeros", "ones"):
            p.fill_(1.0 if kind == "ones" else 0.0)
            continue
        gname = stage.global_name(name)
        vocab_rows = getattr(p, "vocab_rows", None)
        partition = getattr(p, "tp_partition", None)
        if master:
            full = _draw(full_shape(p, tp_size), stds[kind], _generator(seed, gname), vocab_rows)
            value = shard(full, partition, tp_size, tp_rank)
        else:
            rank = tp_rank if partition is not None else 0
            if vocab_rows is not None:
                local_rows = max(0, min(p.shape[0], vocab_rows - tp_rank * p.shape[0]))
                vocab_rows = local_rows
            value = _draw(list(p.shape), stds[kind], _generator(seed, gname, rank), vocab_rows)
        p.copy_(value.to(p.dtype))
