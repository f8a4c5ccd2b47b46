"""What megaclap's machinery costs: tokens/s of a full training step (forward, backward, clip,
AdamW) for megaclap's GPT vs a plain single-file PyTorch GPT of the same shape
(bench/reference_gpt.py), alternating A and B runs in one process; and data-parallel scaling.

    python -m bench.model_overhead [--runs 5 --steps 5] [--out bench/results/model_overhead.json]
    python -m bench.model_overhead --dp 2 [--ddp-bucket-size N]  # CPU/gloo: dp=2 vs dp=1, same per-rank batch
    python -m bench.model_overhead --device cuda --size 350m --bf16 [--compile] [--peak-tflops 989]
    python -m bench.model_overhead --device cuda --size 350m --bf16 --grid 8x1024,16x1024,16x2048
    python -m bench.model_overhead ... --profile   # + the top ops (CUDA kernels on CUDA) of each step

Steps run the way the training loop runs them: no host sync inside a step (megaclap:
train_step(sync=False); reference: the loss is not read), one synchronisation per timed run.
MFU = tokens/s x FLOPs per token (Megatron's formula, megaclap.training.logging) / --peak-tflops.
--grid runs each micro batch x sequence length (each a fresh pair of models) and names the one
with the highest megaclap MFU. --profile traces --profile-steps more steps of each model with
torch.profiler after the timed runs and prints their top ops side by side, by self time (device
time of the CUDA kernels on CUDA, CPU time of the aten ops on CPU), with call counts per step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from bench.reference_gpt import GPT
from megaclap.config import parse_args
from megaclap.parallel.state import ParallelState
from megaclap.training.logging import flops_per_token
from megaclap.training.trainer import Trainer

SIZES = {"350m": dict(layers=24, hidden=1024, heads=16, seq=1024, vocab=50304)}  # GPT-2 medium, vocab padded
DEFAULTS = dict(layers=4, hidden=256, heads=4, seq=256, vocab=8192)


def megaclap_trainer(a, device, world: int = 1, rank: int = 0, microbatches: int = 1) -> Trainer:
    argv = ["--num-layers", str(a.layers), "--hidden-size", str(a.hidden), "--num-attention-heads", str(a.heads),
            "--seq-length", str(a.seq), "--max-position-embeddings", str(a.seq), "--vocab-size", str(a.vocab),
            "--micro-batch-size", str(a.mbs), "--global-batch-size", str(a.mbs * microbatches * world),
            "--train-iters", "1000", "--mock-data", "--lr", "1e-4",
            "--hidden-dropout", "0", "--attention-dropout", "0",  # the reference has no dropout
            "--openai-gelu"]                                      # and tanh GELU
    argv += (["--bf16"] if a.bf16 else []) + (["--compile"] if a.compile else [])
    argv += ["--ddp-bucket-size", str(a.ddp_bucket_size)] if a.ddp_bucket_size else []
    cfg = parse_args(argv).validate(world)
    return Trainer(cfg, ParallelState(1, 1, world, rank, device), print_fn=lambda s: None)


def megaclap_step_fn(a, device):
    trainer = megaclap_trainer(a, device)
    batch = trainer.data.train.next_batch()
    return lambda: trainer.train_step(batch, sync=False, measure=False), trainer


def reference_step_fn(a, device):
    torch.manual_seed(0)
    model = GPT(a.vocab, a.hidden, a.layers, a.heads, a.seq).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda",
                            foreach=device.type != "cuda")
    tokens = torch.randint(0, a.vocab, (a.mbs, a.seq + 1), device=device)
    dtype = torch.bfloat16 if a.bf16 else None
    forward = torch.compile(model) if a.compile else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=a.bf16):
            loss = forward(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    return step


def timed(step, steps: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _profile_ops(fn, steps: int, device) -> dict:
    """{op or kernel name: [calls per step, self ms per step]} over `steps` steps of fn."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        timed(fn, steps, device)
    out = {}
    for e in prof.key_averages():
        on_device = e.device_type.name == "CUDA" if cuda else e.key.startswith("aten::")
        self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if on_device and self_us > 0:
            out[e.key] = [e.count / steps, self_us / 1e3 / steps]
    return out


def profile_table(fns: dict, steps: int, device, top: int = 25) -> dict:
    """Print the top ops of each step side by side (by megaclap's self time, then the reference's
    ops it lacks) and return {model: {name: [calls, ms]}}."""
    ops = {name: _profile_ops(fn, steps, device) for name, fn in fns.items()}
    mine, ref = ops["megaclap"], ops["reference"]
    names = sorted(mine, key=lambda k: -mine[k][1])[:top]
    names += [k for k in sorted(ref, key=lambda k: -ref[k][1])[:top] if k not in names]
    what = "CUDA kernels" if device.type == "cuda" else "aten ops (CPU)"
    print(f"top {what} per step, self time, {steps} profiled steps each:")
    print("| op | megaclap calls | megaclap ms | reference calls | reference ms |")
    print("|---|---|---|---|---|")
    for k in names:
        m, r = mine.get(k, [0, 0.0]), ref.get(k, [0, 0.0])
        print(f"| {k[:70]} | {m[0]:g} | {m[1]:.3f} | {r[0]:g} | {r[1]:.3f} |")
    total = {n: (sum(c for c, _ in v.values()), sum(t for _, t in v.values())) for n, v in ops.items()}
    for n, (calls, ms) in total.items():
        print(f"  {n}: {calls:g} ops, {ms:.2f} ms self time per step")
    return ops


def overhead(a, device) -> dict:
    megaclap_fn, trainer = megaclap_step_fn(a, device)
    fns = {"megaclap": megaclap_fn, "reference": reference_step_fn(a, device)}
    for fn in fns.values():  # warm-up (and compilation)
        timed(fn, a.warmup, device)
    tokens = a.steps * a.mbs * a.seq
    rates = {k: [] for k in fns}
    for _ in range(a.runs):  # alternate A and B
        for name, fn in fns.items():
            rates[name].append(tokens / timed(fn, a.steps, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    m = trainer.cfg.model
    fpt = flops_per_token(m, m.padded_vocab_size(1))
    mfu = {k: v * fpt / (a.peak_tflops * 1e12) for k, v in med.items()}
    ratio = med["megaclap"] / med["reference"]
    print(f"| model | tokens/s (median of {a.runs}) | MFU | runs |")
    print("|---|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.0f} | {100 * mfu[k]:.1f}% | {', '.join(f'{x:.0f}' for x in v)} |")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ratio megaclap / reference: {ratio:.3f} (target >= 0.95) on {name}, h={a.hidden} L={a.layers} "
          f"heads={a.heads} s={a.seq} b={a.mbs} V={a.vocab} bf16={a.bf16} compile={a.compile}; "
          f"MFU against {a.peak_tflops} TFLOP/s")
    out = {"device": name, "tokens_per_s": rates, "median": med, "ratio": ratio, "flops_per_token": fpt,
           "mfu": mfu, "mbs": a.mbs, "seq": a.seq}
    if a.profile:
        out["profile"] = profile_table(fns, a.profile_steps, device)
    return out


def grid(a, device) -> dict:
    """overhead() for each micro batch x sequence length of --grid; the best megaclap MFU."""
    runs = []
    for cell in a.grid.split(","):
        a.mbs, a.seq = (int(v) for v in cell.lower().split("x"))
        print(f"--- micro batch {a.mbs}, sequence {a.seq}")
        runs.append(overhead(a, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = max(runs, key=lambda r: r["mfu"]["megaclap"])
    print("| micro batch | sequence | megaclap tokens/s | megaclap MFU | reference MFU | ratio |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['mbs']} | {r['seq']} | {r['median']['megaclap']:.0f} | {100 * r['mfu']['megaclap']:.1f}% | "
              f"{100 * r['mfu']['reference']:.1f}% | {r['ratio']:.3f} |")
    print(f"best: micro batch {best['mbs']}, sequence {best['seq']}: megaclap MFU "
          f"{100 * best['mfu']['megaclap']:.1f}%")
    return {"grid": runs, "best": {"mbs": best["mbs"], "seq": best["seq"], "mfu": best["mfu"]}}


# --- data-parallel scaling on CPU (gloo) -------------------------------------------------------
def _dp_rank(rank: int, world: int, a, port: int, queue) -> None:
    """One rank: median step time per reduction mode. In this tree at dp > 1, the overlapped
    GradBuffer and the same buckets all-reduced after backward alternate run by run (A/B);
    a tree from before issue 15 (no grad_buffer) is timed as it is ("before")."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=5))
    trainer = megaclap_trainer(a, torch.device("cpu"), world, rank, a.microbatches)
    batch = trainer.data.train.next_batch()
    modes = {"before": None}
    if hasattr(trainer, "grad_buffer"):
        from megaclap.training.grads import GradBuffer
        modes = {"overlap": trainer.grad_buffer}
        if world > 1:
            modes["after_backward"] = GradBuffer(trainer.stage, trainer.ps, 4 * trainer.cfg.parallel.ddp_bucket_size,
                                                 overlap=False)
        step = lambda: trainer.train_step(batch, sync=False, measure=False)  # noqa: E731
    else:
        step = lambda: trainer.train_step(batch)  # noqa: E731
    secs = {m: [] for m in modes}
    for _ in range(a.runs):
        for mode, buf in modes.items():
            if buf is not None:
                trainer.grad_buffer = buf
            step()  # warm-up of this mode
            if world > 1:
                dist.barrier()
            secs[mode].append(timed(step, a.steps, torch.device("cpu")) / a.steps)
    queue.put((rank, {m: statistics.median(v) for m, v in secs.items()}))
    if world > 1:
        dist.destroy_process_group()


def dp_scaling(a) -> dict:
    import socket
    ctx = torch.multiprocessing.get_context("fork")
    out = {}
    for world in (1, a.dp):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = ctx.Queue()
        procs = [ctx.Process(target=_dp_rank, args=(r, world, a, port, queue)) for r in range(world)]
        for p in procs:
            p.start()
        times = dict(queue.get(timeout=1800) for _ in procs)
        for p in procs:
            p.join()
        for mode in times[0]:
            out[f"dp{world}_{mode}_step_s"] = max(t[mode] for t in times.values())
    base = out.get("dp1_overlap_step_s", out.get("dp1_before_step_s"))
    print(f"step time, same per-rank batch ({a.microbatches} microbatches of {a.mbs}), median of {a.runs}:")
    for key, value in out.items():
        print(f"  {key:28s} {value * 1e3:9.1f} ms   x{value / base:.3f} of dp=1")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="a preset shape (the next five flags, where not given, and --mbs 8)")
    p.add_argument("--hidden", type=int, default=None, help="default 256")
    p.add_argument("--layers", type=int, default=None, help="default 4")
    p.add_argument("--heads", type=int, default=None, help="default 4")
    p.add_argument("--seq", type=int, default=None, help="default 256")
    p.add_argument("--vocab", type=int, default=None, help="default 8192")
    p.add_argument("--mbs", type=int, default=8)
    p.add_argument("--grid", default=None, help="micro batch x sequence cells, e.g. 8x1024,16x2048")
    p.add_argument("--profile", action="store_true", help="top ops/kernels of both steps side by side")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (megaclap: --compile)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense TFLOP/s for MFU (H100 bf16: 989)")
    p.add_argument("--dp", type=int, default=0, help="CPU data-parallel scaling: dp=N vs dp=1 ranks (gloo)")
    p.add_argument("--microbatches", type=int, default=2, help="per-rank microbatches for --dp")
    p.add_argument("--ddp-bucket-size", type=int, default=None, help="passed to megaclap (elements per bucket)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/model_overhead.json")
    a = p.parse_args()
    for key, value in {**DEFAULTS, **SIZES.get(a.size, {})}.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    result = {"config": dict(vars(a)), "torch": torch.__version__}
    device = torch.device(a.device)
    result.update(dp_scaling(a) if a.dp else grid(a, device) if a.grid else overhead(a, device))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
