"""Tensor-parallel layers that act as plain Linear / Embedding when tp is None or of size 1.

Each sharded parameter carries `tp_partition = (dim, stride)`: the full (master) tensor is
cut into tp chunks along `dim`; stride > 1 means the full tensor is `stride` blocks stacked
along dim and each rank takes its chunk of every block (SwiGLU's fused [gate; up]).
`init_kind` tells megaclap.model.init how to fill it (normal / scaled_normal / zeros / ones).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from megaclap.parallel.collectives import copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from megaclap.parallel.state import GroupInfo


def tp_size_rank(tp: Optional[GroupInfo]) -> tuple[int, int]:
    return (1, 0) if tp is None else (tp.size, tp.rank)


def _mark(p: nn.Parameter, partition, init_kind: str) -> nn.Parameter:
    p.tp_partition = partition
    p.init_kind = init_kind
    return p


class ColumnParallelLinear(nn.Module):
    """Y = X A^T + b with A split by rows (output features) over tp ranks.

    x: (..., in) replicated -> y: (..., out/tp), or (..., out) with gather_output.
    """

    def __init__(self, in_features: int, out_features: int, tp: Optional[GroupInfo], bias: bool = True,
                 gather_output: bool = False, init_kind: str = "normal", stride: int = 1):
        super().__init__()
        size, _ = tp_size_rank(tp)
        if out_features % size:
            raise ValueError(f"output features {out_features} not divisible by tensor-parallel size {size}")
        self.tp, self.gather_output = tp, gather_output
        self.weight = _mark(nn.Parameter(torch.empty(out_features // size, in_features)), (0, stride), init_kind)
        self.bias = _mark(nn.Parameter(torch.empty(out_features // size)), (0, stride), "zeros") if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_tp(x, self.tp), self.weight, self.bias)
        return gather_from_tp(y, self.tp) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """Y = X A^T + b with A split by columns (input features); partial sums are all-reduced.

    x: (..., in/tp) (or (..., in) scattered if not input_is_parallel) -> y: (..., out) replicated.
    """

    def __init__(self, in_features: int, out_features: int, tp: Optional[GroupInfo], bias: bool = True,
                 input_is_parallel: bool = True, init_kind: str = "scaled_normal"):
        super().__init__()
        size, _ = tp_size_rank(tp)
        if in_features % size:
            raise ValueError(f"input features {in_features} not divisible by tensor-parallel size {size}")
        self.tp, self.input_is_parallel = tp, input_is_parallel
        self.weight = _mark(nn.Parameter(torch.empty(out_features, in_features // size)), (1, 1), init_kind)
        # the bias is added after the all-reduce, so it is replicated
        self.bias = _mark(nn.Parameter(torch.empty(out_features)), None, "zeros") if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.tp)
        if self.tp is None or self.tp.size == 1:  # no partial sums: the bias inside the GEMM
            return F.linear(x, self.weight, self.bias)
        y = reduce_from_tp(F.linear(x, self.weight), self.tp, inplace=True)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding with the (padded) vocabulary split over tp ranks. ids: (b, s) -> (b, s, h)."""

    def __init__(self, padded_vocab: int, hidden: int, tp: Optional[GroupInfo], vocab_size: int):
        super().__init__()
        size, rank = tp_size_rank(tp)
        if padded_vocab % size:
            raise ValueError(f"padded vocabulary {padded_vocab} not divisible by tensor-parallel size {size}")
        self.tp, self.per_rank = tp, padded_vocab // size
        self.start = rank * self.per_rank
        self.weight = _mark(nn.Parameter(torch.empty(self.per_rank, hidden)), (0, 1), "normal")
        self.weight.vocab_rows = vocab_size  # rows >= vocab_size are padding (initialised to zero)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp is None or self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.tp, inplace=True)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross entropy over logits sharded on the vocabulary dim; padded columns are masked out."""

    @staticmethod
    def forward(ctx, logits, target, tp, vocab_size):
        # logits: (b, s, V/tp) fp32; target: (b, s)
        size, rank = tp_size_rank(tp)
        group = None if size == 1 else tp.group
        per_rank = logits.shape[-1]
        start = rank * per_rank
        cols = torch.arange(start, start + per_rank, device=logits.device)
        logits = logits.masked_fill(cols >= vocab_size, float("-inf"))
        logits_max = logits.max(dim=-1).values
        if group is not None:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        logits = logits - logits_max.unsqueeze(-1)
        local = target - start
        outside = (local < 0) | (local >= per_rank)
        local = local.masked_fill(outside, 0)
        predicted = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        exp = logits.exp()
        sum_exp = exp.sum(dim=-1)
        if group is not None:
            dist.all_reduce(predicted, group=group)
            dist.all_reduce(sum_exp, group=group)
        loss = sum_exp.log() - predicted
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local, outside = ctx.saved_tensors
        # d loss / d logits = softmax - onehot(target), the onehot only on the rank owning it
        grad = softmax.scatter_add_(-1, local.unsqueeze(-1), -(~outside).unsqueeze(-1).to(softmax.dtype))
        return grad.mul_(grad_loss.unsqueeze(-1)), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp: Optional[GroupInfo],
                                 vocab_size: int) -> torch.Tensor:
    """Per-token loss (b, s) from vocab-sharded logits (b, s, V/tp); columns >= vocab_size ignored."""
    if tp is None or tp.size == 1:  # one shard: torch's fused kernel on the unpadded columns
        flat = logits[..., :vocab_size].float().reshape(-1, vocab_size)
        return F.cross_entropy(flat, target.reshape(-1), reduction="none").view(target.shape)
    return _VocabParallelCrossEntropy.apply(logits.float(), target, tp, vocab_size)
