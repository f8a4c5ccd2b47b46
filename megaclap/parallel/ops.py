"""The pipeline schedules as data: for each stage, the ordered operations of one step.

This is the one source of truth for operation order. The per-rank schedule
(megaclap.parallel.schedules.forward_backward) executes these lists, so an emulated pipeline's
stages (megaclap.parallel.emulate) run them too, and the time model
(megaclap.parallel.timemodel) replays the same lists: "the same operations and waits as the p2p
layer" holds by construction.

Operations of stage r (microbatches i, j):

    forward i / backward j            compute on this stage
    recv_forward i, send_forward i,   one p2p group each, exactly as P2P issues it (the method
    recv_backward j, send_backward j, of that name): a paired group sends one message and
    send_forward_recv_backward i j,   receives the other direction's message from the same
    send_backward_recv_forward j i    neighbour

A p2p operation is listed only where it moves a message on this stage (the first stage receives
no activations and sends no gradients, the last stage the reverse), so every listed p2p
operation sends and/or receives; a paired one always does both.

1F1B (non-interleaved) on stage r of pp with M microbatches:
    warmup    min(pp - r - 1, M) times: recv_forward, forward, send_forward
    steady    M - warmup times: forward, send_forward_recv_backward, backward, then
              send_backward_recv_forward (send_backward after the last)
    cooldown  the remaining backwards: recv_backward, backward, send_backward
so stage r holds at most pp - r forward activations (asserted below and in the schedule).
GPipe: M times recv_forward, forward, send_forward; then M times recv_backward, backward,
send_backward (M in flight). Forward-only (evaluation): the forwards of GPipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

FORWARD, BACKWARD = "forward", "backward"
RECV_FORWARD, SEND_FORWARD = "recv_forward", "send_forward"
RECV_BACKWARD, SEND_BACKWARD = "recv_backward", "send_backward"
SEND_FORWARD_RECV_BACKWARD = "send_forward_recv_backward"
SEND_BACKWARD_RECV_FORWARD = "send_backward_recv_forward"
SCHEDULES = ("1f1b", "gpipe", "forward-only")

# p2p kind -> (direction sent or None, direction received or None)
_MESSAGES = {RECV_FORWARD: (None, "fwd"), SEND_FORWARD: ("fwd", None), RECV_BACKWARD: (None, "bwd"),
             SEND_BACKWARD: ("bwd", None), SEND_FORWARD_RECV_BACKWARD: ("fwd", "bwd"),
             SEND_BACKWARD_RECV_FORWARD: ("bwd", "fwd")}


@dataclass(frozen=True)
class Action:
    """One operation of one stage. `mb` is the microbatch computed, sent, or (receive-only)
    received; `recv_mb` the microbatch a paired group receives."""

    kind: str
    mb: int
    recv_mb: int = -1

    @property
    def is_compute(self) -> bool:
        return self.kind in (FORWARD, BACKWARD)

    def send(self) -> Optional[tuple]:
        """(direction, microbatch) of the message this group sends, or None."""
        d = _MESSAGES.get(self.kind, (None, None))[0]
        return None if d is None else (d, self.mb)

    def recv(self) -> Optional[tuple]:
        """(direction, microbatch) of the message this group receives, or None."""
        d = _MESSAGES.get(self.kind, (None, None))[1]
        if d is None:
            return None
        return d, self.mb if self.recv_mb < 0 else self.recv_mb


def peer_stage(direction: str, sending: bool, stage: int) -> int:
    """The stage a message in `direction` goes to (sending) or comes from (receiving)."""
    return stage + 1 if (direction == "fwd") == sending else stage - 1


def _moves(action: Action, stage: int, pp: int) -> bool:
    """Whether the action does anything on this stage (a p2p group needs its neighbour)."""
    if action.is_compute:
        return True
    message = action.send() or action.recv()
    sending = action.send() is not None
    return 0 <= peer_stage(message[0], sending, stage) < pp


def _one_f_one_b(m: int, pp: int, r: int) -> list:
    warmup = min(pp - r - 1, m)
    steady = m - warmup
    out = []
    for i in range(warmup):
        out += [Action(RECV_FORWARD, i), Action(FORWARD, i), Action(SEND_FORWARD, i)]
    if steady:
        out.append(Action(RECV_FORWARD, warmup))
    for j in range(steady):
        i = warmup + j
        out += [Action(FORWARD, i), Action(SEND_FORWARD_RECV_BACKWARD, i, j), Action(BACKWARD, j)]
        last = j + 1 == steady
        out.append(Action(SEND_BACKWARD, j) if last
                   else Action(SEND_BACKWARD_RECV_FORWARD, j, i + 1))
    for j in range(steady, m):
        out += [Action(RECV_BACKWARD, j), Action(BACKWARD, j), Action(SEND_BACKWARD, j)]
    return out


def _gpipe(m: int, forward_only: bool) -> list:
    out = []
    for i in range(m):
        out += [Action(RECV_FORWARD, i), Action(FORWARD, i), Action(SEND_FORWARD, i)]
    for j in range(0 if forward_only else m):
        out += [Action(RECV_BACKWARD, j), Action(BACKWARD, j), Action(SEND_BACKWARD, j)]
    return out


def in_flight_bound(schedule: str, m: int, pp: int, stage: int) -> int:
    """Forward activations stage `stage` may hold at once: pp - r under 1F1B, M under GPipe."""
    if schedule == "forward-only":
        return 0
    return min(m, pp - stage) if schedule == "1f1b" else m


def stage_ops(schedule: str, m: int, pp: int, stage: int) -> list:
    """The operations of `stage` in one step of `schedule` (1f1b, gpipe, forward-only) with m
    microbatches, in order; p2p groups that move nothing on this stage are left out."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r} (one of {SCHEDULES})")
    if schedule == "1f1b":
        ops = _one_f_one_b(m, pp, stage)
    else:
        ops = _gpipe(m, schedule == "forward-only")
    ops = [a for a in ops if _moves(a, stage, pp)]
    held, peak = 0, 0
    for a in ops:
        if schedule != "forward-only":
            held += {FORWARD: 1, BACKWARD: -1}.get(a.kind, 0)
            peak = max(peak, held)
    bound = in_flight_bound(schedule, m, pp, stage)
    assert held == 0 and peak <= bound, (schedule, m, pp, stage, peak)
    return ops


def messages(action: Action, stage: int) -> tuple:
    """((direction, mb, to stage) sent or None, (direction, mb, from stage) received or None)."""
    sent, got = action.send(), action.recv()
    return (None if sent is None else (*sent, peer_stage(sent[0], True, stage)),
            None if got is None else (*got, peer_stage(got[0], False, stage)))
