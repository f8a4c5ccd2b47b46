"""One process, all pipeline stages (--pp-emulate): the P-process run, bit for bit, on one device.

Each stage runs the ordinary per-rank program (Trainer, schedule, P2P, Channels, checkpointing)
in its own thread, seeing a StageView: the ParallelState of the rank it would be in the
P-process run (pp_rank, is_first/last_stage, neighbours, global rank), with the process's real
tp and dp groups and in-process pipeline groups. Nothing of the per-rank program changes; three
things are provided in process instead of by torch.distributed:

    Mailbox     the p2p transport: a send puts its tensor in a FIFO per (sender, receiver,
                tag); a receive copies the oldest one into its own preallocated buffer. The two
                Channel endpoints of a boundary live in two stages' P2P objects, each with its
                own state, exactly as on two ranks.
    LocalGroup  the pp, mp (model-parallel norm), embedding and world groups among the stages:
                all-reduce (sum in stage order, max), gather, barrier.
    Baton       only one stage thread runs at a time. A stage runs until it needs a message
                not yet sent or a collective not yet complete, then hands the baton to the next
                stage (round robin) that can go on. So stages never compute concurrently (their
                measured times are their own), the interleaving is deterministic (every dp rank
                issues its real dp collectives in the same order), and a schedule bug is a
                reported deadlock, not a hang. Each stage keeps its own torch RNG state (what
                the stage's rank would hold: dropout), swapped in when it gets the baton.

Data parallelism stays real: each of the tp x dp processes emulates its own pipeline.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import torch

from megaclap.parallel.state import GroupInfo, ParallelState


class EmulationAborted(Exception):
    """Another stage of this emulated pipeline failed; this one stops too (not a RuntimeError, so
    no layer mistakes it for a transport failure of its own)."""


def _always() -> bool:
    return True


class Baton:
    """Runs n stage threads one at a time, deterministically (module docstring)."""

    def __init__(self, n: int, device: torch.device):
        self.lock = threading.Lock()
        self.turns = [threading.Condition(self.lock) for _ in range(n)]
        self.holder, self.done, self.error, self.deadlock = 0, set(), None, None
        self.waiting: dict = {s: (_always, "start") for s in range(1, n)}
        self.cuda = device if device.type == "cuda" else None
        self.initial_rng = self._rng()
        self.rng: list = [None] * n
        self.hooks: list = [[] for _ in range(n)]  # (on_leave, on_enter) callbacks per stage

    def _rng(self) -> tuple:
        cuda = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None
        return torch.get_rng_state(), cuda

    def _leave(self, stage: int) -> None:
        self.rng[stage] = self._rng()
        for leave, _ in self.hooks[stage]:
            leave()

    def _enter(self, stage: int) -> None:
        cpu, cuda = self.rng[stage] or self.initial_rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.cuda)
        for _, enter in self.hooks[stage]:
            enter()

    def add_hooks(self, stage: int, on_leave: Callable, on_enter: Callable) -> None:
        """Call on_leave when `stage` hands the baton on and on_enter when it gets it back."""
        self.hooks[stage].append((on_leave, on_enter))

    def _pass(self, stage: int) -> None:
        """Give the baton to the next stage after `stage` that can go on (lock held)."""
        n = len(self.turns)
        for k in range(1, n + 1):
            nxt = (stage + k) % n
            if nxt not in self.done and nxt in self.waiting and self.waiting[nxt][0]():
                self.holder = nxt
                self.turns[nxt].notify()
                return
        if len(self.done) < n and self.error is None:
            stuck = "; ".join(f"stage {s} waits for {what}"
                              for s, (_, what) in sorted(self.waiting.items()))
            self.deadlock = RuntimeError(f"emulated pipeline deadlock: {stuck}")
            self._fail(self.deadlock)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        for turn in self.turns:
            turn.notify_all()

    def _await_turn(self, stage: int) -> None:
        self.turns[stage].wait_for(lambda: self.holder == stage or self.error is not None)
        if self.deadlock is not None:
            raise self.deadlock
        if self.error is not None:
            raise EmulationAborted(f"stage {stage} stopped: {self.error}")
        del self.waiting[stage]
        self._enter(stage)

    def begin(self, stage: int) -> None:
        """A stage thread's first call: wait for its first turn."""
        with self.lock:
            if stage == 0:
                self._enter(0)
            else:
                self._await_turn(stage)

    def wait(self, stage: int, ready: Callable[[], bool], what: str) -> None:
        """Block `stage` until ready() (another stage makes it true), running the others meanwhile."""
        if ready():
            return
        with self.lock:
            self.waiting[stage] = (ready, what)
            self._leave(stage)
            self._pass(stage)
            self._await_turn(stage)

    def end(self, stage: int) -> None:
        with self.lock:
            self.done.add(stage)
            self._pass(stage)

    def fail(self, stage: int, error: BaseException) -> None:
        with self.lock:
            self.done.add(stage)
            self._fail(error)


class LocalGroup:
    """Collectives among some stages of one emulated pipeline (members in stage order)."""

    def __init__(self, baton: Baton, stages: list):
        self.baton, self.stages = baton, list(stages)
        self.calls = dict.fromkeys(self.stages, 0)
        self.rounds: dict = {}

    def member(self, stage: int) -> "LocalMember":
        return LocalMember(self, stage)

    def gather(self, stage: int, obj) -> list:
        """Every member's obj, in stage order, on every member."""
        k = self.calls[stage]
        self.calls[stage] += 1
        entry = self.rounds.setdefault(k, {"values": {}, "read": 0})
        entry["values"][stage] = obj
        n = len(self.stages)
        self.baton.wait(stage, lambda: len(entry["values"]) == n,
                        f"collective {k} of stages {self.stages}")
        out = [entry["values"][s] for s in self.stages]
        entry["read"] += 1
        if entry["read"] == n:
            del self.rounds[k]
        return out


class LocalMember:
    """One stage's handle on a LocalGroup: what a GroupInfo.group holds in an emulated pipeline."""

    def __init__(self, group: LocalGroup, stage: int):
        self.group, self.stage = group, stage

    def gather(self, obj) -> list:
        return self.group.gather(self.stage, obj)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In place; the members' values combined in stage order (the same bits on every member)."""
        parts = self.gather(tensor.detach().clone())
        total = parts[0]
        combine = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}[op]
        for part in parts[1:]:
            total = combine(total, part)
        tensor.copy_(total)
        return tensor

    def barrier(self) -> None:
        self.gather(None)


class _Sent:
    def wait(self) -> bool:
        return True


class _Receipt:
    """A posted receive: waiting copies the oldest matching message into the receive buffer."""

    def __init__(self, mailbox: "Mailbox", stage: int, key: tuple, buf: torch.Tensor):
        self.mailbox, self.stage, self.key, self.buf = mailbox, stage, key, buf

    def wait(self) -> bool:
        queue = self.mailbox.queues.setdefault(self.key, deque())
        src, dst, tag = self.key
        self.mailbox.baton.wait(self.stage, lambda: len(queue) > 0,
                                f"message {tag} from rank {src} to rank {dst}")
        self.buf.copy_(queue.popleft())
        return True


class Mailbox:
    """The in-process p2p transport of one emulated pipeline (a P2P.transport per stage)."""

    def __init__(self, baton: Baton):
        self.baton = baton
        self.queues: dict = {}  # (src rank, dst rank, tag) -> deque of sent tensors

    def transport(self, stage: int, rank: int) -> Callable:
        """stage's transport: callable(list[Op]) -> works, one per op (sends complete at once)."""
        def run(ops: list) -> list:
            works = []
            for op in ops:
                if op.send:
                    self.queues.setdefault((rank, op.peer, op.tag), deque()).append(op.tensor)
                    works.append(_Sent())
                else:
                    works.append(_Receipt(self, stage, (op.peer, rank, op.tag), op.tensor))
            return works
        return run


class Emulation:
    """The shared pieces of one process's emulated pipeline."""

    def __init__(self, process: ParallelState, pp: int):
        self.process, self.pp = process, pp
        self.baton = Baton(pp, process.device)
        self.mailbox = Mailbox(self.baton)
        stages = list(range(pp))
        self.groups = {"pp": LocalGroup(self.baton, stages), "mp": LocalGroup(self.baton, stages),
                       "world": LocalGroup(self.baton, stages),
                       "embd": LocalGroup(self.baton, sorted({0, pp - 1}))}
        self.views = [StageView(process, pp, s, self) for s in stages]


class StageView(ParallelState):
    """Stage `stage` of an emulated pipeline: the ParallelState of the rank it would be in a run
    with one process per stage (world = the process world x pp), the process's real tp and dp
    groups, in-process pp, mp and embedding groups."""

    def __init__(self, process: ParallelState, pp: int, stage: int, emulation: Emulation):
        self.tp_size, self.dp_size, self.pp_size = process.tp_size, process.dp_size, pp
        self.tp_rank, self.dp_rank, self.pp_rank = process.tp_rank, process.dp_rank, stage
        self.world_size = process.world_size * pp
        self.rank = self.global_rank(self.tp_rank, self.dp_rank, stage)
        self.device, self.timeout = process.device, process.timeout
        self.emulation = emulation
        ranks = tuple(self.global_rank(self.tp_rank, self.dp_rank, p) for p in range(pp))
        g = emulation.groups
        self.groups = {"tp": process.tp, "dp": process.dp,
                       "pp": GroupInfo(g["pp"].member(stage), pp, stage, ranks),
                       "mp": GroupInfo(g["mp"].member(stage), pp, stage, ranks),
                       "world": GroupInfo(g["world"].member(stage), pp, stage, ranks)}
        ends = g["embd"].stages
        if stage in ends:
            self.groups["embd"] = GroupInfo(g["embd"].member(stage), len(ends), ends.index(stage),
                                            tuple(ranks[s] for s in ends))

    def transport(self) -> Callable:
        """The in-process p2p transport of this stage."""
        return self.emulation.mailbox.transport(self.pp_rank, self.rank)

    def __repr__(self) -> str:
        return "Emulated" + super().__repr__()


def run_pipeline(process: ParallelState, pp: int, program: Callable) -> list:
    """Run program(view) for every stage of this process's pipeline, one thread per stage under
    the baton; the results by stage. A stage's exception is re-raised here (the first stage's
    own error, not the other stages' EmulationAborted)."""
    emulation = Emulation(process, pp)
    results: list = [None] * pp
    errors: list = [None] * pp

    def body(stage: int) -> None:
        baton = emulation.baton
        try:
            baton.begin(stage)
            if process.device.type == "cuda":
                torch.cuda.set_device(process.device)  # the current device is per thread
            results[stage] = program(emulation.views[stage])
            baton.end(stage)
        except BaseException as e:  # noqa: BLE001  (re-raised by the caller's thread)
            errors[stage] = e
            baton.fail(stage, e)

    threads = [threading.Thread(target=body, args=(s,), name=f"megaclap-stage-{s}", daemon=True)
               for s in range(pp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, EmulationAborted)), None)
    if first is None:
        first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results

