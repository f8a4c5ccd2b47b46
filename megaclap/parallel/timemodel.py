"""Step time of a pipeline over a link, from measured per-operation times: a discrete-event replay
of the schedule's operations (megaclap.parallel.ops, the lists the p2p layer issues) over the link
model of megaclap.parallel.simlink. One run's measurements price any number of links.

Each stage replays its operations in order on its own clock, as if it ran on its own device:

    forward / backward   clock += the measured compute time
    p2p group            clock += encode (of the message it sends); the message leaves stamped
                         with that time; with sender=on the group also waits until the message
                         has departed on the sender's wire; a receive waits until its message's
                         arrival on the receiver's wire (wires advanced in the order each stage
                         consumes messages, as SimLink does); then clock += decode

A stage blocks on a message its sender has not sent yet; stages advance round robin until all
are done (a schedule that cannot finish is an error, not a number).

A step starts at the previous step's synchronisation point (the all-reduce of the grad norm over
all stages): stage r begins after `start` (its optimizer step and per-step overhead), runs its
operations, adds `end` (its gradient reduction) and reaches the next synchronisation point; the
step time is the latest arrival there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from megaclap.parallel.ops import messages, stage_ops
from megaclap.config.links import Link
from megaclap.parallel.simlink import Wires


@dataclass
class OpTime:
    """What one operation of one stage costs: compute seconds (forward / backward), or for a p2p
    group the encode time and payload bytes of its send and the decode time of its receive."""

    seconds: float = 0.0
    encode: float = 0.0
    nbytes: int = 0
    decode: float = 0.0


@dataclass
class StageTimes:
    """One stage's step: an OpTime per operation of stage_ops(...), and the time before the first
    operation (start) and after the last one until the synchronisation point (end)."""

    ops: list = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


class _Replay:
    """The state of one replay: stage clocks, messages in flight and every endpoint's wires."""

    def __init__(self, plans: list, stages: list, link: Optional[Link]):
        pp = len(plans)
        self.plans, self.stages, self.link = plans, stages, link
        self.conv = link.conventions if link is not None else None
        self.clock = [s.start for s in stages]
        self.sent: dict = {}  # (direction, mb, receiving stage) -> (sent at, bytes, sending stage)
        self.issued: dict = {}  # stage -> when its current group may complete (its sends are out)
        self.posted = 0         # groups posted so far (progress even when their receive must wait)
        self.inbox = [Wires(link) for _ in range(pp)] if link is not None else None
        self.outbox = [Wires(link) for _ in range(pp)] if link is not None else None

    def _issue(self, r: int, action, cost: OpTime) -> None:
        """The group's send leaves when it is posted, whether or not its receive is there yet."""
        out = messages(action, r)[0]
        now = done = self.clock[r] + (cost.encode if out is not None else 0.0)
        if out is not None:
            direction, mb, dst = out
            self.sent[(direction, mb, dst)] = (now, cost.nbytes, r)
            if self.conv is not None and self.conv.sender == "on":
                departure = self.outbox[r].transfer(self.conv.send_key(r, dst), cost.nbytes, now)[0]
                done = max(done, departure)
        self.issued[r] = done
        self.posted += 1

    def step(self, r: int, pos: int) -> bool:
        """Advance stage r by its operation `pos`; False if it must wait for a message first."""
        action, cost = self.plans[r][pos], self.stages[r].ops[pos]
        if action.is_compute:
            self.clock[r] += cost.seconds
            return True
        if r not in self.issued:
            self._issue(r, action, cost)
        got = messages(action, r)[1]
        if got is not None and (got[0], got[1], r) not in self.sent:
            return False
        done = self.issued.pop(r)
        if got is not None:
            direction, mb, src = got
            sent_at, nbytes, _ = self.sent.pop((direction, mb, r))
            arrival = sent_at
            if self.conv is not None:
                arrival = self.inbox[r].transfer(self.conv.receive_key(src, r), nbytes, sent_at)[1]
            done = max(done, arrival) + cost.decode
        self.clock[r] = done
        return True


def replay(schedule: str, m: int, stages: list, link: Optional[Link]) -> list:
    """Each stage's arrival at the step's synchronisation point (seconds from the previous one);
    link None is an infinitely fast link. `link` is as one rank sees it (Link.for_rank)."""
    pp = len(stages)
    plans = [stage_ops(schedule, m, pp, r) for r in range(pp)]
    for r, (plan, st) in enumerate(zip(plans, stages)):
        if len(st.ops) != len(plan):
            raise ValueError(f"stage {r}: {len(st.ops)} measured operations for {len(plan)} of the "
                             f"{schedule} schedule with {m} microbatches")
    state, pos = _Replay(plans, stages, link), [0] * pp
    while any(pos[r] < len(plans[r]) for r in range(pp)):
        before = (sum(pos), state.posted)
        for r in range(pp):
            while pos[r] < len(plans[r]) and state.step(r, pos[r]):
                pos[r] += 1
        if (sum(pos), state.posted) == before:
            stuck = [f"stage {r} at {plans[r][pos[r]]}" for r in range(pp)
                     if pos[r] < len(plans[r])]
            raise RuntimeError(f"the {schedule} schedule cannot finish: {', '.join(stuck)}")
    return [state.clock[r] + stages[r].end for r in range(pp)]


def step_time(schedule: str, m: int, stages: list, link: Optional[Link]) -> float:
    """The modeled step time: the latest stage's arrival at the synchronisation point."""
    return max(replay(schedule, m, stages, link))


def uniform_stages(schedule: str, m: int, pp: int, forward: float, backward: float,
                   encode: float = 0.0, decode: float = 0.0, nbytes: int = 0) -> list:
    """StageTimes with the same cost for every operation of its kind (hand-made cases, benches)."""
    out = []
    for r in range(pp):
        costs = []
        for a in stage_ops(schedule, m, pp, r):
            if a.is_compute:
                costs.append(OpTime(seconds=forward if a.kind == "forward" else backward))
            else:
                sends = a.send() is not None
                costs.append(OpTime(encode=encode if sends else 0.0, nbytes=nbytes if sends else 0,
                                    decode=decode if a.recv() is not None else 0.0))
        out.append(StageTimes(costs))
    return out
