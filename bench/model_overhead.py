"""What megaclap's parallel machinery costs at world size 1: tokens/s of a full training step
(forward, backward, clip, AdamW) for megaclap's GPT vs a plain single-file PyTorch GPT of the
same shape (bench/reference_gpt.py), alternating A and B runs in one process.

    python -m bench.model_overhead [--runs 5 --steps 5] [--out bench/results/model_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from bench.reference_gpt import GPT
from megaclap.arguments import parse_args
from megaclap.parallel.state import ParallelState
from megaclap.training.trainer import Trainer


def megaclap_step_fn(a, device):
    argv = ["--num-layers", str(a.layers), "--hidden-size", str(a.hidden), "--num-attention-heads", str(a.heads),
            "--seq-length", str(a.seq), "--vocab-size", str(a.vocab), "--micro-batch-size", str(a.mbs),
            "--global-batch-size", str(a.mbs), "--train-iters", "1000", "--mock-data", "--lr", "1e-4",
            "--hidden-dropout", "0", "--attention-dropout", "0",  # the reference has no dropout
            "--openai-gelu"]                                      # and tanh GELU
    argv += ["--bf16"] if a.bf16 else []
    cfg = parse_args(argv).validate(1)
    trainer = Trainer(cfg, ParallelState(1, 1, 1, 0, device), print_fn=lambda s: None)
    batch = trainer.data.train.next_batch()
    return lambda: trainer.train_step(batch)


def reference_step_fn(a, device):
    torch.manual_seed(0)
    model = GPT(a.vocab, a.hidden, a.layers, a.heads, a.seq).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda",
                            foreach=device.type != "cuda")
    tokens = torch.randint(0, a.vocab, (a.mbs, a.seq + 1), device=device)
    dtype = torch.bfloat16 if a.bf16 else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=a.bf16):
            loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    return step


def timed(step, steps: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--mbs", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/model_overhead.json")
    a = p.parse_args()
    device = torch.device(a.device)
    fns = {"megaclap": megaclap_step_fn(a, device), "reference": reference_step_fn(a, device)}
    for fn in fns.values():  # warm-up
        timed(fn, 2, device)
    tokens = a.steps * a.mbs * a.seq
    rates = {k: [] for k in fns}
    for _ in range(a.runs):  # alternate A and B
        for name, fn in fns.items():
            rates[name].append(tokens / timed(fn, a.steps, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["megaclap"] / med["reference"]
    print(f"| model | tokens/s (median of {a.runs}) | runs |")
    print("|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    print(f"ratio megaclap / reference: {ratio:.3f} (target >= 0.95) on {device.type}, "
          f"h={a.hidden} L={a.layers} heads={a.heads} s={a.seq} b={a.mbs} V={a.vocab}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"config": vars(a), "tokens_per_s": rates, "median": med, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
