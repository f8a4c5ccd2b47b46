"""Convergence of each compression method in real PP=2 training (forked gloo ranks, CPU).

GPT-tiny, --pp-fwd-codec topk:0.1 --pp-bwd-codec quant:8 --lazy-sampling-prob 0.5 for every
method, plus `none` with the same lazy sampling (the effect of reuse alone) and `none`
without it (ordinary training). Called by bench/compression.py (--convergence-steps).
"""
from __future__ import annotations

import time

from tests.dist import run_ranks
from tests.train_utils import make_trainer

TINY = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--max-position-embeddings", "64", "--vocab-size", "512", "--micro-batch-size", "4",
        "--global-batch-size", "16", "--lr", "1e-3", "--lr-warmup-iters", "10", "--use-cpu-initialization",
        "--eval-iters", "8", "--pipeline-model-parallel-size", "2",
        "--lr-decay-style", "cosine", "--openai-gelu"]   # the pre-issue-14 defaults the README figures used
CODECS = ["--pp-fwd-codec", "topk:0.1", "--pp-bwd-codec", "quant:8"]
LAZY = ["--lazy-sampling-prob", "0.5"]
RUNS = [("none", [], "none, p=1"), ("none", LAZY, "none, p=0.5")] + [
    (m, CODECS + LAZY, f"{m}, p=0.5") for m in ("direct", "ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu")]


def _worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        losses.append(tr.train_step(tr.data.train.next_batch())["loss"])
    seconds = time.perf_counter() - start
    comm = tr.gather_telemetry()
    val = tr.evaluate()
    return {"losses": losses, "val": val, "seconds": seconds, "last": tr.ps.is_last_stage,
            "comm": tr.comm_total.tolist() if comm is not None else None}


def convergence_table(steps: int, data_args: list[str]) -> list[dict]:
    rows = []
    for method, extra, label in RUNS:
        argv = TINY + data_args + ["--train-iters", str(steps), "--pp-compression-method", method] + extra
        res = [r for r in run_ranks(_worker, 2, argv, steps, timeout_s=3600) if r["last"]][0]
        comm = res["comm"][0]  # boundary 0: [fwd, bwd] x [raw, payload, err, sends, ref]
        tail = res["losses"][-20:]
        rows.append({"run": label, "final_train_loss": sum(tail) / len(tail), "val_loss": res["val"],
                     "fwd_ratio": comm[0][1] / max(comm[0][0], 1), "bwd_ratio": comm[1][1] / max(comm[1][0], 1),
                     "bytes_sent": comm[0][1] + comm[1][1], "fwd_rel_err": comm[0][2] / max(comm[0][3], 1),
                     "seconds": res["seconds"]})
    return rows


def print_convergence(rows: list[dict], steps: int) -> None:
    print(f"\n(3) convergence, GPT-tiny PP=2, {steps} steps, fwd topk:0.1 / bwd quant:8 where compressed")
    print("| run | final train loss (last 20) | val loss | fwd ratio | bwd ratio | MB sent | fwd rel err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['final_train_loss']:.4f} | {r['val_loss']:.4f} | {r['fwd_ratio']:.3f} | "
              f"{r['bwd_ratio']:.3f} | {r['bytes_sent'] / 2**20:.1f} | {r['fwd_rel_err']:.3f} |")
