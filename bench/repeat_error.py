"""What the forward Channel delivers on fresh and on lazily repeated steps (issue 21.1).

    python -m bench.repeat_error [--steps 120] [--seeds 1 2 3] [--out bench/results/repeat_error.json]

GPT-tiny (bench/wan_speedrun.py's model: 2 layers, h=64, seq 64, micro batch 2, global batch 8)
at PP=2 on mock data, lazy sampling p = 0.5, Clapping with hquant:4 on fresh steps and hquant:2
deltas (wan_speedrun's `fresh4-delta2-bwd4-0.5`), against direct hquant:3 on every step. Per
step, the sender's relative error ||x_hat - x|| / ||x|| of the forward boundary, averaged over
the step's microbatches, then over fresh and over repeated steps after the first 10 steps.

Rows, each run with every seed in one invocation:
    seeded, dropout 0.1     masks from the samples and the fresh step (this tree)
    unseeded, dropout 0.1   masks from the running generator (the behaviour before issue 21.1)
    dropout 0               no masks at all
    direct hquant:3, 0.1    the stateless codec at about the same bytes
Mean over seeds with a 95% t interval.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.report import mean_interval, print_table, write_json  # noqa: E402
from tests.dist import run_ranks  # noqa: E402
from tests.train_utils import make_trainer  # noqa: E402

MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "256",
         "--seq-length", "64", "--max-position-embeddings", "64", "--vocab-size", "512", "--mock-data",
         "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "1e-3", "--lr-warmup-iters", "10",
         "--use-cpu-initialization", "--pipeline-model-parallel-size", "2", "--eval-iters", "1"]
CLAPPING = ["--pp-compression-method", "clapping-fu", "--pp-bwd-compression-method", "direct",
            "--pp-fwd-codec", "hquant:2", "--clapping-fresh-codec", "hquant:4", "--pp-bwd-codec", "hquant:4:sr",
            "--lazy-sampling-prob", "0.5"]
DIRECT = ["--pp-compression-method", "direct", "--pp-fwd-codec", "hquant:3", "--pp-bwd-codec", "hquant:4:sr",
          "--lazy-sampling-prob", "0.5"]
ROWS = [("clapping fresh hquant:4 / delta hquant:2, seeded masks", CLAPPING, 0.1, True),
        ("same, unseeded masks (before issue 21.1)", CLAPPING, 0.1, False),
        ("same, dropout 0", CLAPPING, 0.0, True),
        ("direct hquant:3", DIRECT, 0.1, True)]
WARMUP = 10


def _worker(rank, world, argv, steps, seeded):
    import megaclap.training.trainer as trainer_module
    if not seeded:  # the old behaviour: no per-microbatch seeding, masks from the running generator
        real = trainer_module.StepInfo
        trainer_module.StepInfo = lambda **kw: real(**{**kw, "rng_seed": None})
    tr = make_trainer(rank, world, argv)
    errors = {"fresh": [], "repeat": []}
    for step in range(steps):
        batch = tr.data.train.next_batch()
        tr.train_step(batch)
        if tr.ps.is_first_stage:
            stats = [ch.stats for (b, d, s), ch in tr.p2p.channels.items() if d == "fwd"]
            if step >= WARMUP:
                kind = "fresh" if batch.fresh else "repeat"
                errors[kind].append(sum(s.rel_err_mean for s in stats) / len(stats))
            for s in stats:
                s.reset()
    return errors if tr.ps.is_first_stage else None


def measure(steps: int, seeds: list) -> list:
    rows = []
    for label, flags, dropout, seeded in ROWS:
        per_seed = {"fresh": [], "repeat": []}
        for seed in seeds:
            argv = MODEL + flags + ["--seed", str(seed), "--train-iters", str(steps),
                                    "--hidden-dropout", str(dropout), "--attention-dropout", str(dropout)]
            errors = run_ranks(_worker, 2, argv, steps, seeded, timeout_s=3600)[0]
            for kind in per_seed:
                per_seed[kind].append(statistics.fmean(errors[kind]) if errors[kind] else float("nan"))
        rows.append({"run": label, "dropout": dropout, "seeded": seeded, "per_seed": per_seed,
                     **{kind: mean_interval(v) for kind, v in per_seed.items()}})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", default="bench/results/repeat_error.json")
    a = ap.parse_args(argv)
    rows = measure(a.steps, a.seeds)
    print_table(f"forward Channel relative error, GPT-tiny PP=2, p=0.5, {a.steps} steps (first {WARMUP} "
                f"dropped), seeds {a.seeds}: mean +- 95% interval",
                ["run", "dropout", "fresh steps", "repeated steps"],
                [[r["run"], r["dropout"], f"{r['fresh'][0]:.3f} +- {r['fresh'][1]:.3f}",
                  f"{r['repeat'][0]:.3f} +- {r['repeat'][1]:.3f}"] for r in rows])
    write_json(a.out, {"steps": a.steps, "seeds": a.seeds, "warmup": WARMUP, "rows": rows})


if __name__ == "__main__":
    main()
