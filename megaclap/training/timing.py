"""The time model inside a training run: each log interval, every stage's OpClock records are
gathered to the logging rank, matched with the schedule's operations, and replayed over every
--sim-links link (megaclap.parallel.timemodel); the modeled step time and tokens/s per link go to
the log line, TensorBoard and --timing-json.

From a step's phases (megaclap.training.opclock) each stage gets, per operation of
stage_ops(schedule, M, pp, r): forward / backward compute, encode time and payload bytes of its
send, decode time of its receive; and
    start   the rest of its step: its optimizer step, the next step's data, the work outside
            any phase (the time from the synchronisation point to its first operation)
    end     its gradient reduction (dp-allreduce), plus the grad-norm phase where the clock
            measured own time (an emulated stage); in a real multi-process run that phase is
            mostly the wait for the other stages, which the replay itself produces
p2p-wait is never used: the link model replaces the transport.

The "ideal" link (infinitely fast) is always priced: the pipeline's compute critical path, as if
each stage ran on its own device. The measured step time is the logging stage's step period
(consecutive step ends); on one device it is the emulated, sequential step.

--timing-json (rewritten atomically each interval; its size stays bounded in long runs):
    {"version", "emulated", "device", "pp", "dp", "schedule", "tokens_per_step",
     "links": {name: {bandwidth_bps, latency_s, conventions}},
     "intervals": [{iteration, steps, fresh_steps, measured_step_s,
                    modeled_step_s: {link: {all, fresh, repeat}}, modeled_tokens_per_s: {link: t}}],
     "stages": [{forward_s, backward_s, encode_s, decode_s, bytes, start_s, end_s}],  # last interval
     "steps": [{iteration, fresh, microbatches, measured_s, modeled_s: {link: s}}],  # last STEPS_KEPT
     "summary": {after_step, measured_step_s, modeled_step_s: {link: {all, fresh, repeat}}}}
Times are seconds (modeled means per interval; a run's modeled total over any sequence of fresh
and repeated steps is sum(fresh_steps * fresh + (steps - fresh_steps) * repeat)); stage figures
are means per microbatch / message; "bytes" is {direction: {"fresh": mean, "repeat": mean}} per
message: fresh and repeated (lazy) steps differ in bytes.
"""
from __future__ import annotations

import json
import os
import statistics
from collections import deque
from typing import Optional

from megaclap.parallel.collectives import gather_objects
from megaclap.parallel.ops import stage_ops
from megaclap.config.links import Link, parse_conventions, parse_links
from megaclap.parallel.timemodel import OpTime, StageTimes, step_time

SCHEDULE_PHASES = ("forward-compute", "backward-compute", "encode", "decode")
STEPS_KEPT = 1000  # per-step records the JSON keeps (the latest)
PLACED = ("p2p-wait", "dp-allreduce", "grad-norm")  # phases not part of a stage's `start`
IDEAL = "ideal"


def stage_times(record: dict, schedule: str, pp: int, stage: int) -> StageTimes:
    """One stage's StageTimes for one step from its OpClock record (module docstring)."""
    plan = stage_ops(schedule, record["microbatches"], pp, stage)
    queue = deque(p for p in record["phases"] if p[0] in SCHEDULE_PHASES)

    def take(name: str) -> tuple:
        if not queue or queue[0][0] != name:
            got = queue[0][0] if queue else "nothing"
            raise ValueError(f"stage {stage}: the step's phases do not follow the {schedule} "
                             f"schedule (expected {name}, got {got})")
        return queue.popleft()

    ops = []
    for action in plan:
        if action.is_compute:
            ops.append(OpTime(seconds=take(f"{action.kind}-compute")[1]))
            continue
        cost = OpTime()
        if action.send() is not None:
            _, cost.encode, _, cost.nbytes = take("encode")
        if action.recv() is not None:
            cost.decode = take("decode")[1]
        ops.append(cost)
    if queue:
        raise ValueError(f"stage {stage}: {len(queue)} phases left over after the {schedule} "
                         "schedule")
    by: dict = {}
    for name, seconds, _, _ in record["phases"]:
        by[name] = by.get(name, 0.0) + seconds
    end = by.get("dp-allreduce", 0.0) + (by.get("grad-norm", 0.0) if record["own"] else 0.0)
    placed = sum(by.get(name, 0.0) for name in SCHEDULE_PHASES + PLACED)
    return StageTimes(ops, start=max(0.0, record["total"] - placed), end=end)


def _mean(values) -> Optional[float]:
    values = list(values)
    return sum(values) / len(values) if values else None


def _stage_summary(records: list, times: list, schedule: str, pp: int, stage: int) -> dict:
    """Means over an interval of one stage's per-operation measurements (records and their
    StageTimes)."""
    fwd, bwd, enc, dec, start, end = [], [], {}, {}, [], []
    sizes: dict = {}
    for rec, st in zip(records, times):
        start.append(st.start)
        end.append(st.end)
        for action, cost in zip(stage_ops(schedule, rec["microbatches"], pp, stage), st.ops):
            if action.kind == "forward":
                fwd.append(cost.seconds)
            elif action.kind == "backward":
                bwd.append(cost.seconds)
            if action.send() is not None:
                d = action.send()[0]
                enc.setdefault(d, []).append(cost.encode)
                kind = "fresh" if rec["fresh"] else "repeat"
                sizes.setdefault(d, {}).setdefault(kind, []).append(cost.nbytes)
            if action.recv() is not None:
                dec.setdefault(action.recv()[0], []).append(cost.decode)
    return {"forward_s": _mean(fwd), "backward_s": _mean(bwd),
            "encode_s": {d: _mean(v) for d, v in enc.items()},
            "decode_s": {d: _mean(v) for d, v in dec.items()},
            "bytes": {d: {k: _mean(v) for k, v in kinds.items()} for d, kinds in sizes.items()},
            "start_s": _mean(start), "end_s": _mean(end)}


def _median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _split(steps: list, name: str) -> dict:
    def pick(fresh):
        return _mean(s["modeled_s"][name] for s in steps if fresh is None or s["fresh"] == fresh)
    return {"all": pick(None), "fresh": pick(True), "repeat": pick(False)}


class TimingLog:
    """The time model of one run (one per rank; only the logging rank computes and writes)."""

    def __init__(self, cfg, pstate):
        p = cfg.parallel
        conventions = parse_conventions(p.link_model)
        links = [Link(float("inf"), 0.0, conventions, IDEAL)]
        links += parse_links(p.sim_links, conventions) if p.sim_links else []
        self.links = links
        self.cfg, self.ps, self.schedule = cfg, pstate, p.pipeline_schedule
        self.path = cfg.train.timing_json
        self.steps: list = []      # every step's record (the summary's medians)
        self.intervals: list = []
        self.stages: list = []     # the latest interval's per-stage figures

    def _rank_links(self) -> list:
        return [link.for_rank(self.ps.tp_size, self.ps.dp_size) for link in self.links]

    def report(self, clock, iteration: int, measured_step_s: float,
               tokens_per_step: int) -> Optional[dict]:
        """Gather this interval's records of every stage (a pp-group collective: every stage calls
        it) and, on the logging rank, model them; the interval's entry (None elsewhere)."""
        mine = clock.take()
        by_stage = gather_objects(mine, self.ps.pp)
        if not self.ps.is_logging_rank or not mine:
            return None
        pp, links = self.ps.pp_size, self._rank_links()
        times = [[stage_times(rec, self.schedule, pp, r) for rec in by_stage[r]] for r in range(pp)]
        first = iteration - len(mine) + 1
        new = []
        for k, rec in enumerate(mine):
            # the step period; None for an interval's first step (its gap holds logging, evaluation)
            period = None if k == 0 else rec["end"] - mine[k - 1]["end"]
            stages = [times[r][k] for r in range(pp)]
            m = rec["microbatches"]
            modeled = {link.name: step_time(self.schedule, m, stages, link) for link in links}
            new.append({"iteration": first + k, "fresh": rec["fresh"], "microbatches": m,
                        "measured_s": period, "modeled_s": modeled})
        self.steps += new
        entry = {"iteration": iteration, "steps": len(new),
                 "fresh_steps": sum(s["fresh"] for s in new),
                 "measured_step_s": measured_step_s,
                 "modeled_step_s": {link.name: _split(new, link.name) for link in links}}
        entry["modeled_tokens_per_s"] = {n: tokens_per_step / v["all"]
                                         for n, v in entry["modeled_step_s"].items()}
        self.intervals.append(entry)
        self.stages = [_stage_summary(by_stage[r], times[r], self.schedule, pp, r) for r in range(pp)]
        if self.path:
            self._write(tokens_per_step)
        return entry

    def summary(self) -> dict:
        """Medians over the steps after the first interval (warm-up), per link; fresh and repeated
        steps apart."""
        skip = self.intervals[0]["steps"] if len(self.intervals) > 1 else 0
        steady = self.steps[skip:]
        out = {"after_step": steady[0]["iteration"] if steady else None,
               "measured_step_s": _median(s["measured_s"] for s in steady),
               "modeled_step_s": {}}
        for link in self.links:
            def med(fresh, name=link.name):
                return _median(s["modeled_s"][name] for s in steady
                               if fresh is None or s["fresh"] == fresh)
            out["modeled_step_s"][link.name] = {"all": med(None), "fresh": med(True),
                                                "repeat": med(False)}
        return out

    def _write(self, tokens_per_step: int) -> None:
        doc = {"version": 1, "emulated": bool(self.cfg.parallel.pp_emulate),
               "device": self.ps.device.type,
               "pp": self.ps.pp_size, "dp": self.ps.dp_size, "schedule": self.schedule,
               "tokens_per_step": tokens_per_step,
               "links": {ln.name: {"bandwidth_bps": ln.bandwidth, "latency_s": ln.latency,
                                   "conventions": str(ln.conventions)} for ln in self.links},
               "intervals": self.intervals, "stages": self.stages,
               "steps": self.steps[-STEPS_KEPT:], "summary": self.summary()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=lambda v: None)
        os.replace(tmp, self.path)


def log_fields(entry: dict) -> str:
    """The log line's time-model fields: modeled step time and tokens/s per link."""
    out = ""
    for name, times in entry["modeled_step_s"].items():
        out += (f" modeled step {name} (ms): {times['all'] * 1e3:.1f} |"
                f" modeled tokens per second {name}: {entry['modeled_tokens_per_s'][name]:.1f} |")
    return out


def tb_scalars(entry: dict) -> dict:
    out = {}
    for name, times in entry["modeled_step_s"].items():
        out[f"time-model/{name}/step-time"] = times["all"]
        out[f"time-model/{name}/tokens-per-second"] = entry["modeled_tokens_per_s"][name]
    out["time-model/measured-step-time"] = entry["measured_step_s"]
    return out
