"""Pipeline schedules: 1F1B (non-interleaved), GPipe and forward-only.

With one stage, 1F1B is plain gradient accumulation (forward, backward per microbatch), so
the same code serves "no pipelining". The schedule does not know how bytes travel (P2P does)
nor how they are compressed (its Channels do).

The operations of each stage, in order, come from megaclap.parallel.ops (one source of truth
for the per-rank schedule, an emulated pipeline and the time model); this module executes them:

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

from megaclap.model.dropout import microbatch_rng
from megaclap.parallel import ops
from megaclap.parallel.ops import Action, in_flight_bound, stage_ops
from megaclap.parallel.p2p import P2P, StepInfo
from megaclap.training.timers import Timers


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
    """Forward and backward of one microbatch on this stage (compute only; no p2p)."""

    def __init__(self, stage, pstate, mbs: list[Microbatch], loss_scale: float, autocast: Callable,
                 stats: ScheduleStats, grad: bool, timers: Timers, info: Optional[StepInfo] = None):
        self.stage, self.ps, self.mbs, self.timers = stage, pstate, mbs, timers
        self.scale, self.autocast, self.stats, self.grad = loss_scale, autocast, stats, grad
        self.info = info
        self.saved: dict = {}

    def _rng(self, i: int):
        """Dropout of microbatch i drawn from its samples and the fresh step that drew them."""
        if self.info is None:
            return nullcontext()
        info = self.info
        return microbatch_rng(self.stage, info.rng_seed, info.drawn, self.mbs[i].ids, self.ps.device)

    def forward(self, i: int, x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """x: the received activation (None on the first stage). Returns the output to send
        (None on the last stage)."""
        mb, ps = self.mbs[i], self.ps
        if ps.is_first_stage:
            x = mb.tokens[:, :-1]
        labels = mb.tokens[:, 1:] if ps.is_last_stage else None
        with self.timers.phase("forward-compute"), torch.set_grad_enabled(self.grad), self.autocast(), \
                self._rng(i):
            out = self.stage(x, labels)
            if ps.is_last_stage:
                loss = out.float().mean()
                self.stats.losses.append(loss.detach())
                out = loss * (self.scale / len(self.mbs))
        if self.grad:
            self.saved[i] = (x, out)
            self.stats.push()
        return None if ps.is_last_stage else out

    def backward(self, i: int, grad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """grad: the output's gradient (None on the last stage). Returns the input's gradient
        to send (None on the first stage)."""
        x, out = self.saved.pop(i)
        with self.timers.phase("backward-compute"):
            _backward(out, grad)
        self.stats.pop()
        return None if self.ps.is_first_stage else x.grad


class _Comm:
    """P2P by microbatch index: the six transport operations, a no-op without a pipeline.
    A stage output is freed down to its autograd node once it has been sent."""

    def __init__(self, p2p: Optional[P2P], info: StepInfo, mbs: list[Microbatch], free: bool):
        self.p2p, self.info, self.mbs, self.free = p2p, info, mbs, free

    def _sent(self, y: Optional[torch.Tensor]) -> None:
        if self.free and y is not None:
            _free_output(y)

    def _early(self, direction: str, i: int) -> None:
        """Post the next microbatch's receive in this direction now (where the backend allows)."""
        if i < len(self.mbs):
            self.p2p.post_recv(direction, i, self.info, self.mbs[i].ids)

    def recv_forward(self, i: int):
        if self.p2p is None:
            return None
        x = self.p2p.recv_forward(i, self.info, self.mbs[i].ids)
        self._early("fwd", i + 1)
        return x

    def send_forward(self, y, i: int) -> None:
        if self.p2p is not None and y is not None:
            self.p2p.send_forward(y, i, self.info, self.mbs[i].ids)
        self._sent(y)

    def recv_backward(self, i: int):
        if self.p2p is None:
            return None
        g = self.p2p.recv_backward(i, self.info, self.mbs[i].ids)
        self._early("bwd", i + 1)
        return g

    def send_backward(self, dx, i: int) -> None:
        if self.p2p is not None and dx is not None:
            self.p2p.send_backward(dx, i, self.info, self.mbs[i].ids)

    def send_forward_recv_backward(self, y, i: int, j: int):
        """Send microbatch i's output, receive microbatch j's output gradient (one group)."""
        if self.p2p is None or y is None:  # last stage: nothing to send, no gradient to receive
            return None
        g = self.p2p.send_forward_recv_backward(y, i, self.info, self.mbs[i].ids, j, self.mbs[j].ids)
        self._sent(y)
        self._early("bwd", j + 1)
        return g

    def send_backward_recv_forward(self, dx, j: int, i: int):
        """Send microbatch j's input gradient, receive microbatch i's input (one group)."""
        if self.p2p is None or dx is None:  # first stage: its input is token ids
            return None
        x = self.p2p.send_backward_recv_forward(dx, j, self.info, self.mbs[j].ids, i, self.mbs[i].ids)
        self._early("fwd", i + 1)
        return x


def forward_backward(stage, pstate, p2p: Optional[P2P], mbs: list[Microbatch], info: StepInfo, *,
                     schedule: str = "1f1b", forward_only: bool = False, loss_scale: float = 1.0,
                     autocast: Callable = nullcontext, timers: Optional[Timers] = None) -> ScheduleStats:
    """Run one step's microbatches through this stage; gradients accumulate in .grad
    (scaled by loss_scale / M). Returns the per-microbatch losses on the last stage."""
    stats = ScheduleStats()
    run = _Runner(stage, pstate, mbs, loss_scale, autocast, stats, grad=not forward_only,
                  timers=timers or Timers(0), info=info)
    comm = _Comm(p2p, info, mbs, free=not forward_only)
    m, pp, r = len(mbs), pstate.pp_size, pstate.pp_rank
    if forward_only:
        execute(stage_ops("forward-only", m, pp, r), run, comm, stats, bound=m)
    elif schedule == "gpipe":
        _gpipe(run, comm, m, pp, r, stats)
    else:
        _one_f_one_b(run, comm, m, pp, r, stats)
    if p2p is not None:
        p2p.wait_sends()
    return stats


class _Held:
    """Tensors between a stage's operations, by microbatch: received inputs and output gradients,
    outputs to send, input gradients to send."""

    def __init__(self):
        self.x, self.g, self.out, self.dx = {}, {}, {}, {}


def _step(a: Action, run: _Runner, comm: _Comm, held: _Held) -> None:
    """Execute one operation (megaclap.parallel.ops) on this stage."""
    i, k = a.mb, a.kind
    if k == ops.FORWARD:
        held.out[i] = run.forward(i, held.x.pop(i, None))
    elif k == ops.BACKWARD:
        held.dx[i] = run.backward(i, held.g.pop(i, None))
    elif k == ops.RECV_FORWARD:
        held.x[i] = comm.recv_forward(i)
    elif k == ops.SEND_FORWARD:
        comm.send_forward(held.out.pop(i), i)
    elif k == ops.RECV_BACKWARD:
        held.g[i] = comm.recv_backward(i)
    elif k == ops.SEND_BACKWARD:
        comm.send_backward(held.dx.pop(i), i)
    elif k == ops.SEND_FORWARD_RECV_BACKWARD:
        held.g[a.recv_mb] = comm.send_forward_recv_backward(held.out.pop(i), i, a.recv_mb)
    elif k == ops.SEND_BACKWARD_RECV_FORWARD:
        held.x[a.recv_mb] = comm.send_backward_recv_forward(held.dx.pop(i), i, a.recv_mb)
    else:
        raise ValueError(f"unknown pipeline operation {a}")


def execute(actions: list, run: _Runner, comm: _Comm, stats: ScheduleStats, bound: int) -> None:
    """Execute a stage's operations in order; its activations in flight stay within `bound`."""
    held = _Held()
    for a in actions:
        _step(a, run, comm, held)
        assert stats.in_flight <= bound, f"a stage holds {stats.in_flight} > {bound} activations"
    assert stats.in_flight == 0 and not held.x and not held.g, "a step ended with work left"


def _gpipe(run: _Runner, comm: _Comm, m: int, pp: int, r: int, stats: ScheduleStats) -> None:
    """All forwards, then all backwards. Within each phase a stage only receives from one
    neighbour and sends to the other, so the plain operations never cross."""
    execute(stage_ops("gpipe", m, pp, r), run, comm, stats, bound=m)


def _one_f_one_b(run: _Runner, comm: _Comm, m: int, pp: int, r: int, stats: ScheduleStats) -> None:
    """Warmup forwards, one forward / one backward (each send paired with the opposite receive),
    cooldown backwards (megaclap.parallel.ops)."""
    execute(stage_ops("1f1b", m, pp, r), run, comm, stats, bound=in_flight_bound("1f1b", m, pp, r))
