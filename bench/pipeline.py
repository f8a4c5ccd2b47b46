"""Pipeline schedule benchmark on CPU (gloo, forked ranks).

(1) Step time against the microbatch count M for PP=2 and PP=4, next to the ideal bubble
    fraction (p-1)/(M+p-1) and the bubble implied by the measurement,
    1 - M * t_mb / T_step, with t_mb one stage's forward+backward time per microbatch
    measured alone in the same run.
(2) Peak activation bytes per stage of 1F1B vs GPipe at M=8: the peak number of microbatches
    in flight (instrumented in the schedule) times the bytes autograd saves per microbatch.
(3) Simulated slow link (--sim-link-bandwidth/--sim-link-latency), 1F1B at M=8, PP=2 and PP=4:
    step time against the ideal max(compute critical path, wire time), where the compute
    critical path is the same layout's unthrottled step time and the wire time is the busiest
    wire's serialisation time per step (bytes * 8 / bandwidth). 'before' runs the old transport
    order (every send and receive its own operation, posted when needed, forward sends
    crossing backward sends, which gloo tolerates), 'after' the paired transport with early
    receives; 'after, gpipe' the same transport under GPipe (M microbatches in flight, where
    1F1B allows pp, so a slow link's round trips are not exposed).

    python -m bench.pipeline [--steps 3] [--sections schedule memory simlink] [--out bench/results/pipeline.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from megaclap.config.units import parse_latency
from tests.dist import run_ranks
from tests.train_utils import make_trainer

MODEL = ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128",
         "--max-position-embeddings", "128", "--vocab-size", "2048", "--micro-batch-size", "4",
         "--train-iters", "1000", "--mock-data", "--use-cpu-initialization"]


def _args(pp: int, m: int, schedule: str = "1f1b") -> list[str]:
    return MODEL + ["--pipeline-model-parallel-size", str(pp), "--global-batch-size", str(4 * m),
                    "--pipeline-schedule", schedule]


def saved_bytes_per_microbatch(trainer) -> int:
    """Bytes autograd keeps for one microbatch's forward on this stage (parameters excluded)."""
    params = {p.data_ptr() for p in trainer.stage.parameters()}
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    m, t = trainer.cfg.model, trainer.cfg.train
    x = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.seq_length)) if trainer.ps.is_first_stage \
        else torch.randn(t.micro_batch_size, m.seq_length, m.hidden_size, requires_grad=True)
    labels = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.seq_length)) if trainer.ps.is_last_stage else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.stage(x, labels)
    return total[0]


def _worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    batch = tr.data.train.next_batch()
    tr.train_step(batch)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        tr.train_step(batch)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "peak": tr.last_stats.peak_in_flight,
            "act_bytes": saved_bytes_per_microbatch(tr), "stage": tr.ps.pp_rank}


def stage_time_per_microbatch(pp: int, steps: int) -> float:
    """One stage's share of the model (num_layers/pp layers) run alone, forward+backward, per microbatch."""
    argv = MODEL + ["--global-batch-size", "4", "--num-layers", str(4 // pp)]
    res = run_ranks(_worker, 1, argv, steps)[0]
    return res["step_s"]


class _CrossingComm:
    """Bench only: the transport order before the paired operations (gloo tolerates it)."""

    @staticmethod
    def install():
        from megaclap.parallel import schedules

        class Crossing(schedules._Comm):
            def send_forward_recv_backward(self, y, i, j):
                self.send_forward(y, i)
                return self.recv_backward(j)

            def send_backward_recv_forward(self, dx, j, i):
                self.send_backward(dx, j)
                return self.recv_forward(i)

        schedules._Comm = Crossing


def _sim_worker(rank, world, argv, steps, transport):
    if transport == "before":
        _CrossingComm.install()  # in the forked rank only
    tr = make_trainer(rank, world, argv)
    if transport == "before":
        tr.p2p.early_recv = False  # the old transport posted every receive when it needed it
    batch = tr.data.train.next_batch()
    tr.train_step(batch)  # warm-up
    if tr.link is not None:
        tr.link.stats.busy_s.clear()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        tr.train_step(batch)
        times.append(time.perf_counter() - start)
    busy = max(tr.link.stats.busy_s.values(), default=0.0) / steps if tr.link is not None else 0.0
    return {"step_s": statistics.median(times), "wire_busy_s": busy}


def schedule_model(pp: int, m: int, schedule: str, s_msg: float, latency: float, c_mb: float) -> float:
    """Step time the time model (megaclap.parallel.timemodel) predicts for this schedule: compute
    c_mb per microbatch and stage (1/3 forward, 2/3 backward), s_msg of serialisation per message
    over the simulated link's wires, plus latency."""
    from megaclap.config.links import Link
    from megaclap.parallel.timemodel import step_time, uniform_stages
    stages = uniform_stages(schedule, m, pp, c_mb / 3, 2 * c_mb / 3, nbytes=1)
    return step_time(schedule, m, stages, Link(8 / s_msg, latency))


def simlink_section(steps: int, bandwidth: str, latency: str) -> list:
    rows = []
    for pp in (2, 4):
        argv = _args(pp, 8)
        compute = max(r["step_s"] for r in run_ranks(_sim_worker, pp, argv, steps, "after"))
        link = ["--sim-link-bandwidth", bandwidth, "--sim-link-latency", latency]
        for transport in ("before", "after", "after, gpipe"):
            schedule = "gpipe" if "gpipe" in transport else "1f1b"
            res = run_ranks(_sim_worker, pp, argv + link + ["--pipeline-schedule", schedule], steps, transport,
                            timeout_s=900)
            step, wire = max(r["step_s"] for r in res), max(r["wire_busy_s"] for r in res)
            ideal = max(compute, wire)
            model = schedule_model(pp, 8, schedule, wire / 8, parse_latency(latency), compute / (8 + pp - 1))
            rows.append({"pp": pp, "M": 8, "transport": transport, "bandwidth": bandwidth, "latency": latency,
                         "step_s": step, "compute_s": compute, "wire_s": wire, "ideal_s": ideal,
                         "over_ideal": step / ideal - 1, "schedule_model_s": model, "over_model": step / model - 1})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sections", nargs="+", default=["schedule", "memory", "simlink"],
                    choices=["schedule", "memory", "simlink"])
    ap.add_argument("--sim-link-bandwidth", default="2mbit")
    ap.add_argument("--sim-link-latency", default="5ms")
    ap.add_argument("--out", default="bench/results/pipeline.json")
    a = ap.parse_args()
    results = {}
    if os.path.exists(a.out):  # sections not run keep their previous results
        with open(a.out) as f:
            results = json.load(f)
    if "schedule" in a.sections:
        results["step_time"] = schedule_section(a.steps)
    if "memory" in a.sections:
        results["activation_memory"] = memory_section()
    if "simlink" in a.sections:
        results["simulated_link"] = simlink_section(a.steps, a.sim_link_bandwidth, a.sim_link_latency)
    print_tables(results)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, a.out)


def schedule_section(steps: int) -> list:
    rows = []
    for pp in (2, 4):
        t_mb = stage_time_per_microbatch(pp, steps)
        for m in (1, 2, 4, 8, 16):
            res = run_ranks(_worker, pp, _args(pp, m), steps)
            step = max(r["step_s"] for r in res)
            rows.append({"pp": pp, "M": m, "step_s": step, "ideal_bubble": (pp - 1) / (m + pp - 1),
                         "measured_bubble": max(0.0, 1 - m * t_mb / step), "t_mb_s": t_mb})
    return rows


def memory_section() -> list:
    mem = []
    for schedule in ("1f1b", "gpipe"):
        res = run_ranks(_worker, 4, _args(4, 8, schedule), 1)
        for r in sorted(res, key=lambda r: r["stage"]):
            mem.append({"schedule": schedule, "stage": r["stage"], "peak_in_flight": r["peak"],
                        "peak_activation_bytes": r["peak"] * r["act_bytes"]})
    return mem


def print_tables(results: dict) -> None:
    print("| PP | M | step time (ms) | ideal bubble (p-1)/(M+p-1) | measured bubble |")
    print("|---|---|---|---|---|")
    for r in results.get("step_time", []):
        print(f"| {r['pp']} | {r['M']} | {r['step_s'] * 1e3:.1f} | {r['ideal_bubble']:.3f} | {r['measured_bubble']:.3f} |")
    print("\n| schedule (PP=4, M=8) | stage | microbatches in flight (peak) | peak activation MiB |")
    print("|---|---|---|---|")
    for r in results.get("activation_memory", []):
        print(f"| {r['schedule']} | {r['stage']} | {r['peak_in_flight']} | {r['peak_activation_bytes'] / 2**20:.1f} |")
    print("\n| PP (M=8) | link | transport | step (ms) | compute critical path (ms) | wire time (ms) |"
          " ideal max(compute, wire) (ms) | over ideal | schedule's wire model (ms) | over model |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results.get("simulated_link", []):
        print(f"| {r['pp']} | {r['bandwidth']}, {r['latency']} | {r['transport']} | {r['step_s'] * 1e3:.0f} |"
              f" {r['compute_s'] * 1e3:.0f} | {r['wire_s'] * 1e3:.0f} | {r['ideal_s'] * 1e3:.0f} |"
              f" {r['over_ideal'] * 100:+.1f}% | {r.get('schedule_model_s', float('nan')) * 1e3:.0f} |"
              f" {r.get('over_model', float('nan')) * 100:+.1f}% |")


if __name__ == "__main__":
    main()
