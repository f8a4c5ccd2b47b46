"""Per-operation timing of training steps, for the time model (megaclap.parallel.timemodel).

OpClock is a Timers (same phases, same --timing-log-level output) that also keeps every training
step's phases in order, each with its own duration and, for an encode, the payload bytes and
direction of the message. The schedule, P2P and the trainer already open a phase around every
forward, backward, encode and decode (and the step's other work), so the step's operations can be
matched one to one with the schedule's operation list (megaclap.training.timing).

    CPU    time.perf_counter at each phase's start and end
    CUDA   a timing event recorded on the current stream at each start and end: no host sync per
           operation; events are resolved once per log interval (take()), after the log step's
           synchronisation

In an emulated pipeline the Baton pauses the clock of a stage while the others run (pause() and
resume() close and reopen the open phases), so every duration is the stage's own time. Outside
an emulated pipeline a phase that waits for other ranks (p2p-wait, grad-norm, dp-allreduce) holds
that wait; the time model uses those phases accordingly (megaclap.training.timing).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from megaclap.training.timers import ALIASES, Timers


class _Span:
    """One phase occurrence (or a whole step): segments [start mark, end mark], paused between."""

    __slots__ = ("name", "segments", "direction", "nbytes")

    def __init__(self, name: str, mark):
        self.name, self.segments, self.direction, self.nbytes = name, [[mark, None]], None, 0


class OpClock(Timers):
    """Timers that also record each step's phases for the time model (module docstring)."""

    def __init__(self, level: int = 0, device=None):
        super().__init__(level, device)
        self.cuda = self.device.type == "cuda"
        self.own = False          # set when the Baton pauses this clock (an emulated stage)
        self._pending: list = []  # finished steps, marks not yet resolved
        self._steps: list = []    # resolved step records since the last take()
        self._step: Optional[dict] = None
        self._phase: Optional[_Span] = None
        self._loose: list = []    # phases before the step (its data): they belong to the next step
        self._paused = False

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, span: _Span) -> float:
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in span.segments) / 1e3
        return sum(b - a for a, b in span.segments)

    # --- steps and phases -------------------------------------------------------------------
    def begin_step(self, fresh: bool, microbatches: int) -> None:
        self._step = {"fresh": bool(fresh), "microbatches": int(microbatches), "spans": self._loose,
                      "before": len(self._loose), "span": _Span("step", self._mark()),
                      "wall": [time.perf_counter(), None]}
        self._loose = []

    def end_step(self) -> None:
        if self._step is None:
            return
        self._step["span"].segments[-1][1] = self._mark()
        self._step["wall"][1] = time.perf_counter()
        self._pending.append(self._step)
        self._step = None

    def phase(self, name: str):
        if self._open is not None:
            return super().phase("")  # nested: counted in the outer phase only
        return self._timed(name)

    def start(self, name: str) -> None:
        if self._open is None:
            self._open, self._phase = name, _Span(name, self._mark())

    def stop(self, name: str) -> None:
        if self._phase is None or self._open != name:
            return
        self._phase.segments[-1][1] = self._mark()
        (self._step["spans"] if self._step is not None else self._loose).append(self._phase)
        self._open, self._phase = None, None

    def sent(self, direction: str, nbytes: int) -> None:
        if self._step is not None and self._step["spans"]:
            span = self._step["spans"][-1]
            span.direction, span.nbytes = direction, int(nbytes)

    # --- the Baton's hooks (megaclap.parallel.emulate) ----------------------------------------
    def _open_spans(self) -> list:
        if self._step is None:
            return []
        return [self._step["span"]] + ([self._phase] if self._phase is not None else [])

    def pause(self) -> None:
        """Another stage takes over: close the open phase's (and step's) current segment."""
        spans = self._open_spans()
        if spans and not self._paused:
            mark = self._mark()
            for span in spans:
                span.segments[-1][1] = mark
            self._paused = True

    def resume(self) -> None:
        spans = self._open_spans()
        if spans and self._paused:
            mark = self._mark()
            for span in spans:
                span.segments.append([mark, None])
        self._paused = False

    # --- reading ----------------------------------------------------------------------------
    def _resolve(self) -> None:
        """Turn finished steps' marks into seconds (one device sync on CUDA); add them to the
        per-phase sums of --timing-log-level."""
        if not self._pending:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
        for step in self._pending:
            phases = []
            for span in step["spans"]:
                seconds = self._seconds(span)
                phases.append((span.name, seconds, span.direction, span.nbytes))
                name = ALIASES.get(span.name, span.name)
                if name in self.seconds:
                    self.seconds[name] += seconds
            before = sum(seconds for _, seconds, _, _ in phases[:step["before"]])  # its data
            self._steps.append({"fresh": step["fresh"], "microbatches": step["microbatches"],
                                "own": self.own, "total": self._seconds(step["span"]) + before,
                                "wall": step["wall"][1] - step["wall"][0], "end": step["wall"][1],
                                "phases": phases})
        self._pending = []

    def take(self) -> list:
        """The steps finished since the last call, as plain records (picklable):
        {fresh, microbatches, own, total, wall, end, phases: [(name, seconds, direction, bytes)]}
        (total: own seconds; wall: host seconds of the step; end: its host clock at the end)."""
        self._resolve()
        steps, self._steps = self._steps, []
        return steps

    def gather(self, pstate) -> torch.Tensor:
        self._resolve()
        return super().gather(pstate)


def wants_op_times(cfg) -> bool:
    """Whether the run feeds the time model: an emulated pipeline, priced links or a timing file."""
    return bool(cfg.parallel.pp_emulate or cfg.parallel.sim_links or cfg.train.timing_json)


def make_timers(cfg, pstate) -> Timers:
    """The trainer's timers: an OpClock when the run feeds the time model (paused by the Baton of
    an emulated pipeline while other stages run), plain Timers otherwise."""
    level = cfg.train.timing_log_level
    if not wants_op_times(cfg):
        return Timers(level, pstate.device)
    clock = OpClock(level, pstate.device)
    emulation = getattr(pstate, "emulation", None)
    if emulation is not None:
        emulation.baton.add_hooks(pstate.pp_rank, clock.pause, clock.resume)
        clock.own = True
    return clock
