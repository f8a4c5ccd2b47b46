"""Fused codec kernels vs the torch code: kernels per round trip (any machine) and, on CUDA, the
round trip's time against x.clone() of the same tensor.

    python -m bench.codec_kernels [--out bench/results/codec_kernels.json]          # counts
    python -m bench.codec_kernels --device cuda [--shape 8,1024,1024] [--reps 7]    # + timings

(1) Kernels per encode + decode of each codec on a [--shape] bf16 tensor, with a fresh seed (as
    every step has): the torch path's aten ops that do work (views, reshapes and allocations
    excluded: they launch nothing), counted with a TorchDispatchMode; and the fused path's
    Triton launches plus the aten ops its host code still runs (a zero fill counts). Counted on
    CPU tensors with CUDA's loop chunking (2^24 elements, one chunk here; CPU loops over 2^16)
    and every Triton launch recorded instead of run, so no GPU is needed.
(2) CUDA only: median wall time of --iters round trips (synchronised around each timed block)
    for the torch path (MEGACLAP_CODEC_KERNELS=torch) and the fused path, next to x.clone();
    "of clone" is clone's time / the round trip's (the round trip's GB/s of raw tensor as a
    fraction of clone's). Paths alternate block by block.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megaclap.compression.codecs import parse_codec
from megaclap.compression.kernels import fused_round_trip

CODECS = ["quant:2", "quant:4", "quant:8", "quant:4:sr", "hquant:1", "hquant:2", "hquant:3",
          "hquant:4", "hquant:8", "hquant:4:sr", "randk:0.1", "randk:0.1:q8", "topk:0.1"]
FREE = {"view", "_unsafe_view", "as_strided", "reshape", "_reshape_alias", "t", "transpose",
        "expand", "slice", "select", "unsqueeze", "squeeze", "detach", "alias", "empty",
        "empty_strided", "empty_like", "split", "split_with_sizes", "unbind", "permute",
        "lift_fresh", "narrow", "view_as", "_to_copy_noop", "resolve_conj", "resolve_neg"}


class _Count(TorchDispatchMode):
    """Counts the aten ops that do work (FREE excluded)."""

    def __init__(self):
        super().__init__()
        self.ops: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in FREE:
            self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@contextmanager
def cuda_chunking():
    """The torch path's loops as on CUDA: 2^24-element chunks (CPU uses 2^16, in cache)."""
    from megaclap.compression import codecs, shared_random, sparse
    saved = shared_random.chunk_size
    def cuda(device):
        return shared_random._DEVICE_CHUNK
    for module in (codecs, shared_random, sparse):
        module.chunk_size = cuda
    try:
        yield
    finally:
        for module in (codecs, shared_random, sparse):
            module.chunk_size = saved


def _round_trip(codec, x, seed: int = 3):
    payload = codec.encode(x, seed=seed)
    return codec.decode(payload, x.shape, x.dtype, seed=seed)


def count_torch(spec: str, x: torch.Tensor) -> dict:
    codec = parse_codec(spec)
    os.environ["MEGACLAP_CODEC_KERNELS"] = "torch"
    try:
        _round_trip(codec, x, seed=3)  # warm the per-shape caches, as a running channel has them
        with cuda_chunking(), _Count() as c:
            _round_trip(codec, x, seed=4)  # a new seed, as every step has
    finally:
        os.environ.pop("MEGACLAP_CODEC_KERNELS")
    return c.ops


def count_fused(spec: str, x: torch.Tensor) -> tuple:
    """(Triton launches, aten ops) of the fused path's host code, launches recorded not run."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    launches, saved = [], (JITFunction.run, InterpretedFunction.run)
    JITFunction.run = InterpretedFunction.run = (
        lambda self, *a, grid, warmup, **k: launches.append(self.__name__))
    try:
        codec = parse_codec(spec)
        fused_round_trip(codec, x, 3)  # warm the codec's per-shape constants
        launches.clear()
        with cuda_chunking(), _Count() as c:
            fused_round_trip(codec, x, 4)
    finally:
        JITFunction.run, InterpretedFunction.run = saved
    return launches, c.ops


def counts_table(shape) -> list:
    x = torch.randn(shape).to(torch.bfloat16)
    rows = []
    print(f"(1) kernels per encode + decode, {list(shape)} bf16")
    print("| codec | torch path: aten ops | fused: Triton launches | fused: other aten ops |")
    print("|---|---|---|---|")
    for spec in CODECS:
        torch_ops = count_torch(spec, x)
        launches, other = count_fused(spec, x)
        rows.append({"codec": spec, "torch_ops": torch_ops, "triton_launches": launches,
                     "fused_other_ops": other})
        other_text = ", ".join(f"{k} x{v}" for k, v in other.items()) or "none"
        print(f"| {spec} | {sum(torch_ops.values())} | {len(launches)} | {other_text} |")
    return rows


def _seconds(fn, device, iters: int) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def timing_table(shape, device, reps: int, iters: int) -> list:
    x = torch.randn(shape, device=device).to(torch.bfloat16)
    raw = x.numel() * x.element_size()
    clone = statistics.median(_seconds(x.clone, device, iters) for _ in range(reps))
    print(f"(2) encode + decode, {list(shape)} bf16 on {torch.cuda.get_device_name(device)}: "
          f"x.clone() {clone * 1e3:.4f} ms ({raw / clone / 1e9:.0f} GB/s)")
    print("| codec | torch ms | fused ms | speedup | torch of clone | fused of clone |")
    print("|---|---|---|---|---|---|")
    rows = []
    for spec in CODECS:
        codec = parse_codec(spec)
        times = {"torch": [], "auto": []}
        for rep in range(reps + 1):
            for mode in times:
                os.environ["MEGACLAP_CODEC_KERNELS"] = mode
                secs = _seconds(lambda: _round_trip(codec, x), device, iters)
                if rep:  # rep 0 warms up (and compiles)
                    times[mode].append(secs)
        os.environ.pop("MEGACLAP_CODEC_KERNELS")
        t, f = statistics.median(times["torch"]), statistics.median(times["auto"])
        rows.append({"codec": spec, "torch_ms": t * 1e3, "fused_ms": f * 1e3,
                     "clone_ms": clone * 1e3,
                     "torch_of_clone": clone / t, "fused_of_clone": clone / f})
        print(f"| {spec} | {t * 1e3:.3f} | {f * 1e3:.3f} | {t / f:.1f}x | {100 * clone / t:.1f}% | "
              f"{100 * clone / f:.1f}% |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="8,1024,1024")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--iters", type=int, default=20, help="round trips per timed block (CUDA)")
    p.add_argument("--out", default="bench/results/codec_kernels.json")
    a = p.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    device = torch.device(a.device)
    result = {"shape": list(shape), "torch": torch.__version__, "counts": counts_table(shape)}
    if device.type == "cuda":
        result["timing"] = timing_table(shape, device, a.reps, a.iters)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
