"""The one-device pipeline and its time model on CPU (gloo, forked ranks).

(1) Cross-check: real P-process runs over a simulated link (--sim-link-bandwidth/-latency) at
    P = 2, 4 and M = 4, 8 microbatches, at three bandwidths set from a calibration run's compute
    and message size: wire-bound (a message takes 3x a microbatch's forward+backward), balanced
    (1x) and compute-bound (0.1x). Each real run also prices the same link with --sim-links from
    its OWN per-operation measurements, so "modeled / real" tests the schedule replay and the
    link model, not the compute: P processes share this machine's cores, so their compute is
    slower than one process's, which is not what the model is about. The modeled step from an
    emulated run (one process, its own compute) is listed next to it for reference. "Behind the
    link model" is the real run's own account (sim link late per step, busiest stage): how much
    later than the model's times its p2p groups completed, summed over the step's groups (the real
    transfer, and waking up on a loaded machine: what the model leaves out).
(2) Overhead: tokens/s of an emulated P=4 run against the P=1 run of the same model: in one
    process (one torch thread) each step of one is followed by a step of the other, so the
    machine's load hits both alike; the median of the per-step ratios, in --repeats separate
    processes, with a 95% interval over them; by wall clock and by CPU time (which does not count
    a stage thread waiting for a core other sessions hold, the one cost load adds to the baton).

    python -m bench.time_model [--sections crosscheck overhead] [--steps 8] [--repeats 3]
                               [--out bench/results/time_model.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import torch

from tests.dist import run_ranks
from tools.ablate_report import read_scalars

MODEL = ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128",
         "--max-position-embeddings", "128", "--vocab-size", "2048", "--micro-batch-size", "2",
         "--mock-data", "--use-cpu-initialization", "--lr", "1e-4", "--eval-iters", "0", "--seed", "1"]
OVERHEAD_MODEL = ["--num-layers", "8", "--hidden-size", "256", "--num-attention-heads", "8", "--seq-length", "128",
                  "--max-position-embeddings", "128", "--vocab-size", "4096", "--micro-batch-size", "4",
                  "--global-batch-size", "16", "--mock-data", "--use-cpu-initialization", "--train-iters", "100",
                  "--eval-iters", "0", "--hidden-dropout", "0", "--attention-dropout", "0"]
REGIMES = {"wire-bound": 3.0, "balanced": 1.0, "compute-bound": 0.1}  # message time / microbatch compute
LATENCY = "2ms"


def _args(pp: int, m: int, steps: int, extra=()) -> list:
    return MODEL + ["--pipeline-model-parallel-size", str(pp), "--global-batch-size", str(2 * m),
                    "--train-iters", str(steps), "--log-interval", str(steps), *extra]


def _train(rank, world, argv):
    from tests.train_utils import make_trainer
    make_trainer(rank, world, argv).train()


def _train_emulated(rank, world, argv):
    from megaclap.config import parse_args
    from megaclap.parallel.emulate import run_pipeline
    from megaclap.parallel.state import ParallelState
    from megaclap.training.trainer import Trainer
    cfg = parse_args(list(argv) + ["--pp-emulate"]).validate(world)
    run_pipeline(ParallelState(1, 1, world, rank, torch.device("cpu")), cfg.parallel.pipeline_model_parallel_size,
                 lambda view: Trainer(cfg, view, print_fn=lambda s: None).train())


def _timing(path: str, skip: int) -> dict:
    """Medians over the steps after `skip`: measured step, modeled step per link, and the stage
    and message figures of the last interval."""
    with open(path) as f:
        doc = json.load(f)
    steps = doc["steps"][skip:]
    med = {name: statistics.median(s["modeled_s"][name] for s in steps) for name in doc["links"]}
    measured = [s["measured_s"] for s in steps if s["measured_s"] is not None]
    return {"measured_s": statistics.median(measured) if measured else None, "modeled_s": med,
            "stages": doc["stages"]}


def calibrate(steps: int, tmp: str) -> tuple:
    """(forward + backward seconds per microbatch on a stage, forward message bytes) of P=2, M=4,
    emulated (one process)."""
    path = os.path.join(tmp, "calibrate.json")
    run_ranks(_train_emulated, 1, _args(2, 4, steps, ["--timing-json", path]), timeout_s=900)
    stages = _timing(path, 2)["stages"]
    compute = statistics.mean(s["forward_s"] + s["backward_s"] for s in stages)
    return compute, stages[0]["bytes"]["fwd"]["fresh"]


def crosscheck(steps: int, tmp: str) -> list:
    compute, nbytes = calibrate(steps, tmp)
    rows = []
    for regime, ratio in REGIMES.items():
        bandwidth = f"{nbytes * 8 / (ratio * compute):.0f}"
        link = ["--sim-links", f"{bandwidth}:{LATENCY}"]
        for pp in (2, 4):
            for m in (4, 8):
                real_path, emu_path = os.path.join(tmp, f"real{pp}{m}{regime}.json"), os.path.join(tmp, "emu.json")
                tb = os.path.join(tmp, f"tb{pp}{m}{regime}")
                real_argv = _args(pp, m, steps, link + ["--sim-link-bandwidth", bandwidth, "--sim-link-latency",
                                                        LATENCY, "--timing-json", real_path, "--tensorboard-dir", tb])
                run_ranks(_train, pp, real_argv, timeout_s=1800)
                run_ranks(_train_emulated, 1, _args(pp, m, steps, link + ["--timing-json", emu_path]), timeout_s=900)
                real, emu = _timing(real_path, 2), _timing(emu_path, 2)
                name = f"{bandwidth}:{LATENCY}"
                row = {"regime": regime, "pp": pp, "M": m, "bandwidth_bps": float(bandwidth), "latency": LATENCY,
                       "message_s": nbytes * 8 / float(bandwidth), "real_s": real["measured_s"],
                       "modeled_s": real["modeled_s"][name], "ideal_s": real["modeled_s"]["ideal"],
                       "modeled_from_emulated_s": emu["modeled_s"][name], "emulated_measured_s": emu["measured_s"],
                       "late_s": read_scalars(tb)["sim-link/late-time"][-1][1]}
                row["model_error"] = row["modeled_s"] / row["real_s"] - 1
                rows.append(row)
                print(_row_text(row), flush=True)
    return rows


def _clocks() -> tuple:
    return time.perf_counter(), time.process_time()


def _overhead_worker(rank, world, steps: int, warmup: int) -> list:
    """Per step ((P=1 wall, CPU seconds), (emulated P=4 wall, CPU seconds)), the two steps run
    back to back in this one process (one torch thread) so that the machine's load hits both
    alike: stage 0 of the emulated pipeline also runs the P=1 trainer's step while the other stages
    wait at a barrier. CPU time (the process's, all threads) does not count waiting for a core."""
    from megaclap.config import parse_args
    from megaclap.parallel.collectives import barrier
    from megaclap.parallel.emulate import run_pipeline
    from megaclap.parallel.state import ParallelState
    from megaclap.training.trainer import Trainer
    process = ParallelState(1, 1, world, rank, torch.device("cpu"))
    single = Trainer(parse_args(OVERHEAD_MODEL).validate(world), process, print_fn=lambda s: None)
    cfg = parse_args(OVERHEAD_MODEL + ["--pipeline-model-parallel-size", "4", "--pp-emulate"]).validate(world)

    def timed(trainer) -> tuple:
        start = _clocks()
        trainer.train_step(trainer.data.train.next_batch(), sync=False)
        return tuple(b - a for a, b in zip(start, _clocks()))

    def program(view):
        tr, pairs = Trainer(cfg, view, print_fn=lambda s: None), []
        for i in range(warmup + steps):
            barrier(view)
            one = timed(single) if view.pp_rank == 0 else (0.0, 0.0)
            barrier(view)
            start = _clocks()
            tr.train_step(tr.data.train.next_batch(), sync=False)
            barrier(view)
            if i >= warmup:
                pairs.append((one, tuple(b - a for a, b in zip(start, _clocks()))))
        return pairs

    return run_pipeline(process, 4, program)[0]


def _interval(values: list) -> tuple:
    mean = statistics.mean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, [mean - half, mean + half]


def overhead(repeats: int, steps: int) -> dict:
    """tokens/s of the emulated P=4 run over the P=1 run's (= P=1 step time / P=4 step time), the
    median over a run's step pairs, by wall clock and by CPU time, in `repeats` processes."""
    runs = []
    for _ in range(repeats):
        pairs = run_ranks(_overhead_worker, 1, steps, 2, timeout_s=3600)[0]
        wall = statistics.median(one[0] / four[0] for one, four in pairs)
        cpu = statistics.median(one[1] / four[1] for one, four in pairs)
        runs.append({"pairs": pairs, "wall_ratio": wall, "cpu_ratio": cpu})
        p1, p4 = (statistics.median(x[0] for x in side) for side in zip(*pairs))
        print(f"overhead: P=1 {p1 * 1e3:.0f} ms/step, emulated P=4 {p4 * 1e3:.0f} ms/step (medians), "
              f"median ratio wall {wall:.3f}, CPU {cpu:.3f}", flush=True)
    wall, wall_ci = _interval([r["wall_ratio"] for r in runs])
    cpu, cpu_ci = _interval([r["cpu_ratio"] for r in runs])
    return {"runs": runs, "ratio_mean": wall, "ratio_ci95": wall_ci, "cpu_ratio_mean": cpu, "cpu_ratio_ci95": cpu_ci,
            "steps": steps, "model": OVERHEAD_MODEL}


def _row_text(r: dict) -> str:
    emu = r["modeled_from_emulated_s"]
    return (f"| {r['regime']} | {r['pp']} | {r['M']} | {r['bandwidth_bps'] / 1e6:.2f} Mbit/s, {r['latency']} |"
            f" {r['message_s'] * 1e3:.1f} | {r['real_s'] * 1e3:.0f} | {r['modeled_s'] * 1e3:.0f} |"
            f" {r['model_error'] * 100:+.1f}% | {r.get('late_s', float('nan')) * 1e3:.0f} | {r['ideal_s'] * 1e3:.0f} |"
            f" {emu * 1e3:.0f} |")


def print_tables(results: dict) -> None:
    print("| regime | P | M | link | message (ms) | real step (ms) | modeled from its own times (ms) |"
          " model error | real behind the link model (ms/step) | ideal link (ms) | modeled from an emulated run (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results.get("crosscheck", []):
        print(_row_text(r))
    o = results.get("overhead")
    if o:
        lo, hi = o["ratio_ci95"]
        clo, chi = o["cpu_ratio_ci95"]
        print(f"\nemulated P=4 / P=1 tokens/s: wall clock {o['ratio_mean']:.3f} (95% interval {lo:.3f}-{hi:.3f}), "
              f"CPU time {o['cpu_ratio_mean']:.3f} ({clo:.3f}-{chi:.3f}); {len(o['runs'])} processes x "
              f"{o['steps']} interleaved step pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["crosscheck", "overhead"], choices=["crosscheck", "overhead"])
    ap.add_argument("--steps", type=int, default=12, help="training steps per cross-check run (2 are warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the overhead pair")
    ap.add_argument("--overhead-steps", type=int, default=12)
    ap.add_argument("--out", default="bench/results/time_model.json")
    a = ap.parse_args()
    results = {}
    if os.path.exists(a.out):  # sections not run keep their previous results
        with open(a.out) as f:
            results = json.load(f)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if "crosscheck" in a.sections:
            results["crosscheck"] = crosscheck(a.steps, tmp)
        if "overhead" in a.sections:
            results["overhead"] = overhead(a.repeats, a.overhead_steps)
    command = "python -m bench.time_model " + " ".join(os.sys.argv[1:])
    for section in a.sections:  # which command produced each section, and how long the run took
        results.setdefault("commands", {})[section] = {"command": command, "wall_s": time.time() - started}
    print_tables(results)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
