"""Pipeline schedule benchmark on CPU (gloo, forked ranks).

(1) Step time against the microbatch count M for PP=2 and PP=4, next to the ideal bubble
    fraction (p-1)/(M+p-1) and the bubble implied by the measurement,
    1 - M * t_mb / T_step, with t_mb one stage's forward+backward time per microbatch
    measured alone in the same run.
(2) Peak activation bytes per stage of 1F1B vs GPipe at M=8: the peak number of microbatches
    in flight (instrumented in the schedule) times the bytes autograd saves per microbatch.

    python -m bench.pipeline [--steps 3] [--out bench/results/pipeline.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="bench/results/pipeline.json")
    a = ap.parse_args()
    rows, mem = [], []
    for pp in (2, 4):
        t_mb = stage_time_per_microbatch(pp, a.steps)
        for m in (1, 2, 4, 8, 16):
            res = run_ranks(_worker, pp, _args(pp, m), a.steps)
            step = max(r["step_s"] for r in res)
            rows.append({"pp": pp, "M": m, "step_s": step, "ideal_bubble": (pp - 1) / (m + pp - 1),
                         "measured_bubble": max(0.0, 1 - m * t_mb / step), "t_mb_s": t_mb})
    for schedule in ("1f1b", "gpipe"):
        res = run_ranks(_worker, 4, _args(4, 8, schedule), 1)
        for r in sorted(res, key=lambda r: r["stage"]):
            mem.append({"schedule": schedule, "stage": r["stage"], "peak_in_flight": r["peak"],
                        "peak_activation_bytes": r["peak"] * r["act_bytes"]})
    print("| PP | M | step time (ms) | ideal bubble (p-1)/(M+p-1) | measured bubble |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pp']} | {r['M']} | {r['step_s'] * 1e3:.1f} | {r['ideal_bubble']:.3f} | {r['measured_bubble']:.3f} |")
    print("\n| schedule (PP=4, M=8) | stage | microbatches in flight (peak) | peak activation MiB |")
    print("|---|---|---|---|")
    for r in mem:
        print(f"| {r['schedule']} | {r['stage']} | {r['peak_in_flight']} | {r['peak_activation_bytes'] / 2**20:.1f} |")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"step_time": rows, "activation_memory": mem}, f, indent=1)


if __name__ == "__main__":
    main()
