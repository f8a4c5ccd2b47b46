"""Compile every fused codec kernel for a GPU that is not here, and check its PTX.

    python tools/kernel_ptx.py [--arch 90] [--specs quant:4,hquant:3,...] [--dump DIR]

The codecs run on small CPU tensors with each Triton kernel's launch recorded instead of run
(the arguments the host code really passes), then each recorded launch is compiled with
triton.compile for sm_<arch> (Triton ships ptxas; no GPU or driver is needed), and its PTX is
checked for what would break bit-identity with the torch reference on a real GPU:

    fma.*.f32 / fma.*.f16    no fused multiply-add (the launches pass enable_fp_fusion=False)
    .ftz                     no flushing of fp32 subnormals to zero
    div.approx / div.full    every fp32 division is div.rn (IEEE)
    rcp.approx, ex2.approx   none (no approximate reciprocal or exponent)

Prints one line per (kernel, variant) and exits 1 on any violation. Must run without
TRITON_INTERPRET (the interpreter has no compiler).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPECS = ["quant:2", "quant:4", "quant:8", "quant:4:sr", "hquant:1", "hquant:2", "hquant:3",
         "hquant:4", "hquant:8", "hquant:1:sr", "hquant:4:128:sr", "hquant:3:4096", "randk:0.1",
         "randk:0.1:scale", "randk:0.1:q4", "randk:0.3:scale:q2", "topk:0.1"]
FORBIDDEN = {"fused multiply-add": re.compile(r"\bfma\.[a-z.]*f(16|32)\b"),
             "flush to zero": re.compile(r"\.ftz\b"),
             "approximate division": re.compile(r"\bdiv\.(approx|full)\."),
             "approximate reciprocal/exponent": re.compile(r"\b(rcp|ex2|lg2)\.approx\b")}


def record_launches(specs: list, dtypes: tuple) -> list:
    """[(jit function, args, kwargs)] of every kernel launch the codecs make on CPU tensors."""
    from triton.runtime.jit import JITFunction
    from megaclap.compression.codecs import parse_codec
    from megaclap.compression.kernels import fused_round_trip

    calls = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        calls.append((self, args, kwargs))

    JITFunction.run = record
    try:
        for spec in specs:
            codec = parse_codec(spec)
            for dtype in dtypes:
                x = torch.randn(2, 8, 96).to(dtype)
                payload = torch.zeros(codec.payload_nbytes(x.shape, dtype), dtype=torch.uint8)
                fused_round_trip(codec, x, 1, payload)
    finally:
        JITFunction.run = original
    return calls


def compile_ptx(fn, args: tuple, kwargs: dict, arch: int) -> str:
    """PTX of one launch of `fn`, compiled for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
    constexprs = {k: v for k, v in kwargs.items() if k in fn.arg_names}
    signature = {}
    for name, value in zip(fn.arg_names, args):
        signature[name] = mangle_type(value)
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn, signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options).asm["ptx"]


def check(ptx: str) -> list:
    return [what for what, pattern in FORBIDDEN.items() if pattern.search(ptx)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--specs", default=",".join(SPECS))
    p.add_argument("--dtypes", default="fp32,bf16,fp16", help="of the tensors (fp32, bf16, fp16)")
    p.add_argument("--dump", default=None, help="write each kernel's PTX into this folder")
    a = p.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile")
        return 2
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    calls = record_launches(a.specs.split(","), tuple(dtypes[d] for d in a.dtypes.split(",")))
    seen, bad = set(), 0
    for fn, args, kwargs in calls:
        key = (fn.__name__, tuple(sorted((k, str(v)) for k, v in kwargs.items())),
               tuple(str(getattr(v, "dtype", type(v).__name__)) for v in args))
        if key in seen:
            continue
        seen.add(key)
        ptx = compile_ptx(fn, args, kwargs, a.arch)
        problems = check(ptx)
        bad += bool(problems)
        consts = ",".join(f"{k}={v}" for k, v in kwargs.items() if k in fn.arg_names)
        print(f"{'FAIL' if problems else 'ok  '} sm_{a.arch} {fn.__name__}[{consts}] "
              f"{len(ptx.splitlines())} PTX lines {'; '.join(problems)}")
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            with open(os.path.join(a.dump, f"{fn.__name__}_{len(seen)}.ptx"), "w") as f:
                f.write(ptx)
    print(f"{len(seen)} kernel variants compiled for sm_{a.arch}, {bad} with violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
