"""Fused codec kernels (Triton) and the rule that decides when a codec uses them.

The torch code in megaclap/compression/ is the reference and the CPU path; the kernels here do
the same arithmetic, op for op, in one or two launches per encode and per decode, so their
payloads and decodes are bit-identical to it (finite inputs; docs/DECISIONS.md, "Fused codec
kernels", lists what could differ on a real GPU and how each kernel is built against it).

MEGACLAP_CODEC_KERNELS (read at every call, so a benchmark can switch it between runs):

    auto    (default) the kernels for CUDA tensors when `triton` imports; torch otherwise
    torch   always the torch code (A/B comparisons, or a GPU without a working Triton)
    triton  always the kernels; on CPU tensors this needs TRITON_INTERPRET=1 (Triton's numpy
            interpreter, how the tests run the kernels without a GPU), set before the first use

Triton is an optional dependency, imported only when a kernel is first used.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

ENV = "MEGACLAP_CODEC_KERNELS"
MODES = ("auto", "torch", "triton")
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def mode() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r} is not one of {', '.join(MODES)}: unset it or pick one")
    return value


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """True when `triton` imports (looked up once; importing it is what the first kernel does)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton.language")
    except Exception:  # a broken or mismatched install: run the torch code instead
        return False
    return True


def use_kernels(t) -> bool:
    """Whether a codec call on tensor `t` runs the fused kernels (see the module docstring)."""
    chosen = mode()
    if chosen == "torch":
        return False
    if chosen == "auto":
        return t.is_cuda and triton_importable()
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "on"):
        raise RuntimeError(f"{ENV}=triton on a {t.device.type} tensor needs TRITON_INTERPRET=1 "
                           f"(Triton's interpreter); unset {ENV} to run the torch code")
    return True


def fusable(t, dtype=None, align: int = 1) -> bool:
    """use_kernels(t), for a call the kernels take: values of fp32, bf16 or fp16 (`dtype`, else
    t's), 1 <= numel < 2^31, and t's data `align`-byte aligned (payload words are read in place)."""
    dtype = dtype or t.dtype
    return (dtype in FLOATS and 0 < t.numel() < 2 ** 31 and t.data_ptr() % align == 0
            and use_kernels(t))


def fused_round_trip(codec, x, seed: int = 0, payload=None) -> tuple:
    """(payload, decoded): x encoded, and `payload` (default: that one) decoded, by the kernels
    directly, whatever the dispatch rule says (tests, benchmarks, tools/kernel_ptx.py)."""
    name = codec.spec.split(":")[0]
    if name in ("randk", "topk"):
        sparse = load("triton_sparse")
        encode = getattr(sparse, f"{name}_encode")
        decode = getattr(sparse, f"{name}_decode")
        args = (seed,) if name == "randk" else ()
    else:
        module = load(f"triton_{name}")
        encode, decode = module.encode, module.decode
        args = (seed,) if name == "hquant" else ()
    encoded = encode(codec, x, *((seed,) if name != "topk" else ()))
    payload = encoded if payload is None else payload
    return encoded, decode(codec, payload, x.shape, x.dtype, *args)


def load(name: str):
    """Kernel module `name` (triton_quant, triton_hquant, triton_sparse), imported on first use."""
    return importlib.import_module(f"{__name__}.{name}")
