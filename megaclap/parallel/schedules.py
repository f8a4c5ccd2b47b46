"""Pipeline schedules: 1F1B (non-interleaved), GPipe and forward-only.

With one stage, 1F1B is plain gradient accumulation (forward, backward per microbatch), so
the same code serves "no pipelining". The schedule does not know how bytes travel (P2P does)
nor how they are compressed (its Channels do).

1F1B on stage r of pp, with M microbatches:
    warmup    min(pp - r - 1, M) forwards
    steady    M - warmup times: one forward, then one backward
    cooldown  the remaining backwards
so stage r holds at most pp - r forward activations at once (asserted). GPipe runs all M
forwards, then all M backwards, and holds M.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.autograd import Variable

from megaclap.parallel.p2p import P2P, StepInfo


@dataclass
class Microbatch:
    tokens: Optional[torch.Tensor]  # (b, s+1) on the first and last stage, else None
    ids: torch.Tensor               # (b,) global sample ids


@dataclass
class ScheduleStats:
    """Instrumentation of one call: losses (last stage) and activation bookkeeping."""

    losses: list = field(default_factory=list)
    peak_in_flight: int = 0
    in_flight: int = 0

    def push(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def pop(self) -> None:
        self.in_flight -= 1


def _free_output(out: torch.Tensor) -> None:
    """Once sent, a stage output's values are not needed: keep only its autograd node."""
    if out.requires_grad and out._base is None:
        out.data = torch.empty((1,), device=out.device, dtype=out.dtype)


def _backward(output: torch.Tensor, grad: Optional[torch.Tensor]) -> None:
    if grad is None:
        output.backward()
    else:  # the engine directly: `output` may have been freed to one element (_free_output)
        Variable._execution_engine.run_backward(
            tensors=(output,), grad_tensors=(grad,), keep_graph=False, create_graph=False,
            inputs=(), allow_unreachable=True, accumulate_grad=True)


class _Runner:
    """Forward and backward of one microbatch on this stage, with its p2p."""

    def __init__(self, stage, pstate, p2p: Optional[P2P], info: StepInfo, mbs: list[Microbatch],
                 loss_scale: float, autocast: Callable, stats: ScheduleStats, grad: bool):
        self.stage, self.ps, self.p2p, self.info, self.mbs = stage, pstate, p2p, info, mbs
        self.scale, self.autocast, self.stats, self.grad = loss_scale, autocast, stats, grad
        self.saved: dict = {}

    def forward(self, i: int) -> None:
        mb, ps = self.mbs[i], self.ps
        x = mb.tokens[:, :-1] if ps.is_first_stage else self.p2p.recv_forward(i, self.info, mb.ids)
        labels = mb.tokens[:, 1:] if ps.is_last_stage else None
        with torch.set_grad_enabled(self.grad), self.autocast():
            out = self.stage(x, labels)
        if ps.is_last_stage:
            loss = out.float().mean()
            self.stats.losses.append(loss.detach())
            out = loss * (self.scale / len(self.mbs))
        else:
            self.p2p.send_forward(out, i, self.info, mb.ids)
            if self.grad:
                _free_output(out)
        if self.grad:
            self.saved[i] = (x, out)
            self.stats.push()

    def backward(self, i: int) -> None:
        x, out = self.saved.pop(i)
        ps, ids = self.ps, self.mbs[i].ids
        grad = None if ps.is_last_stage else self.p2p.recv_backward(i, self.info, ids)
        _backward(out, grad)
        if not ps.is_first_stage:
            self.p2p.send_backward(x.grad, i, self.info, ids)
        self.stats.pop()


def forward_backward(stage, pstate, p2p: Optional[P2P], mbs: list[Microbatch], info: StepInfo, *,
                     schedule: str = "1f1b", forward_only: bool = False, loss_scale: float = 1.0,
                     autocast: Callable = nullcontext) -> ScheduleStats:
    """Run one step's microbatches through this stage; gradients accumulate in .grad
    (scaled by loss_scale / M). Returns the per-microbatch losses on the last stage."""
    stats = ScheduleStats()
    run = _Runner(stage, pstate, p2p, info, mbs, loss_scale, autocast, stats, grad=not forward_only)
    m, pp, r = len(mbs), pstate.pp_size, pstate.pp_rank
    if forward_only:
        for i in range(m):
            run.forward(i)
    elif schedule == "gpipe":
        for i in range(m):
            run.forward(i)
        assert stats.in_flight == m
        for i in range(m):
            run.backward(i)
    else:
        _one_f_one_b(run, m, pp, r, stats)
    if p2p is not None:
        p2p.wait_sends()
    return stats


def _one_f_one_b(run: _Runner, m: int, pp: int, r: int, stats: ScheduleStats) -> None:
    warmup = min(pp - r - 1, m)
    # warmup: fill the pipe
    for i in range(warmup):
        run.forward(i)
    assert stats.in_flight == warmup
    # steady: one forward, one backward
    for j in range(m - warmup):
        run.forward(warmup + j)
        assert stats.in_flight <= pp - r, f"stage {r} holds {stats.in_flight} > pp - r activations"
        run.backward(j)
    # cooldown: drain
    for j in range(m - warmup, m):
        run.backward(j)
    assert stats.in_flight == 0 and stats.peak_in_flight <= pp - r
