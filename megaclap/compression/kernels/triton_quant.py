"""quant:B[:sr] (codecs.QuantCodec) fused: encode = a 4*D-byte memset and two kernels, decode = one.

Encode, x viewed as [rows, D]:
  1. _absmax: per column, max |x| as the int32 bits of |x| (sign bit cleared: for non-negative
     floats integer order is float order, and a NaN outranks inf, so it propagates as torch's
     amax does), atomically max-ed into the payload's scale words: order-free, exact.
  2. _encode: over the flat tensor, a byte range of the code stream a program: inv = fp32(1 /
     scale) * qmax (torch: qmax / scale = scale.reciprocal() * qmax), y = x * inv, round half to
     even (or floor(y + u), u the shared rounding uniform, clamped), code q + qmax, packed.
Decode: one pass over the flat tensor, q * (scale / qmax) (IEEE division, as the reference), cast
on store.
"""
import torch
import triton
import triton.language as tl

from .triton_common import KIND, LAUNCH, floor_exact, key_words, load_codes, load_f32, reciprocal
from .triton_common import new_payload, round_even, rounding_u, store_as, store_codes
from ..shared_random import ROUNDING, stream_key

CODES_PER_PROGRAM = 4096


@triton.jit
def _absmax(x_ptr, pay_ptr, rows, D, tiles_per_split, IN_KIND: tl.constexpr, BR: tl.constexpr,
            BD: tl.constexpr):
    cols = tl.program_id(0) * BD + tl.arange(0, BD)  # [BD]
    first = tl.program_id(1) * tiles_per_split
    acc = tl.zeros((BR, BD), tl.int32)
    for t in range(first, first + tiles_per_split):
        r = t * BR + tl.arange(0, BR)  # [BR]
        m = (r < rows)[:, None] & (cols < D)[None, :]
        x = load_f32(x_ptr, r.to(tl.int64)[:, None] * D + cols[None, :], m, IN_KIND)
        acc = tl.maximum(acc, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
    tl.atomic_max(pay_ptr.to(tl.pointer_type(tl.int32)) + cols, tl.max(acc, axis=0), mask=cols < D)


@triton.jit
def _encode(x_ptr, pay_ptr, n, D, nbytes, k0, k1, IN_KIND: tl.constexpr, QMAX: tl.constexpr,
            BITS: tl.constexpr, SR: tl.constexpr, N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    e = pid * N + tl.arange(0, N)  # [N] flat element indices
    m = e < n
    x = load_f32(x_ptr, e, m, IN_KIND)
    scale = tl.load(pay_ptr.to(tl.pointer_type(tl.float32)) + e % D, mask=m, other=0.0)
    inv = tl.where(scale > 0, reciprocal(scale) * QMAX, 0.0)
    y = x * inv
    if SR:
        q = tl.minimum(tl.maximum(floor_exact(y + rounding_u(e, k0, k1)), -QMAX), QMAX)
    else:
        q = round_even(y)
    codes = tl.where(m, q.to(tl.int32) + QMAX, 0).to(tl.uint32)
    store_codes(pay_ptr + 4 * D, pid * (N * BITS // 8), codes, nbytes, N, BITS)


@triton.jit
def _decode(pay_ptr, out_ptr, n, D, nbytes, OUT_KIND: tl.constexpr, QMAX: tl.constexpr,
            BITS: tl.constexpr, N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    codes = load_codes(pay_ptr + 4 * D, pid * (N * BITS // 8), nbytes, N, BITS)
    e = pid * N + tl.arange(0, N)
    m = e < n
    scale = tl.load(pay_ptr.to(tl.pointer_type(tl.float32)) + e % D, mask=m, other=0.0)
    f = tl.math.div_rn(scale, tl.full(scale.shape, QMAX, tl.float32))
    store_as(out_ptr, e, (codes.to(tl.int32) - QMAX).to(tl.float32) * f, m, OUT_KIND)


def _absmax_grid(rows: int, d: int) -> tuple:
    """(BR, BD, tiles per split, grid): ~4096-element tiles, ~1024 programs at most."""
    bd = min(128, triton.next_power_of_2(d))
    br = max(1, 4096 // bd)
    tiles, col_blocks = triton.cdiv(rows, br), triton.cdiv(d, bd)
    splits = max(1, min(tiles, 1024 // col_blocks))
    per = triton.cdiv(tiles, splits)
    return br, bd, per, (col_blocks, triton.cdiv(tiles, per))


def encode(codec, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The payload codec.encode(x, seed) returns, from the kernels."""
    x = x.contiguous()
    d, n = codec._channels(x.shape), x.numel()
    payload = new_payload(codec, x)
    payload[: 4 * d].zero_()
    br, bd, per, grid = _absmax_grid(n // d, d)
    _absmax[grid](x, payload, n // d, d, per, IN_KIND=KIND[x.dtype], BR=br, BD=bd, **LAUNCH)
    k0, k1 = key_words(stream_key(seed, ROUNDING)) if codec.stochastic else (0, 0)
    codes = CODES_PER_PROGRAM
    _encode[(triton.cdiv(n, codes),)](x, payload, n, d, payload.numel() - 4 * d, k0, k1,
                                      IN_KIND=KIND[x.dtype], QMAX=codec.qmax, BITS=codec.bits,
                                      SR=codec.stochastic, N=codes, **LAUNCH)
    return payload


def decode(codec, payload: torch.Tensor, shape, dtype) -> torch.Tensor:
    """codec.decode(payload, shape, dtype) from the kernel (payload 4-byte aligned)."""
    d = codec._channels(shape)
    out = torch.empty(shape, dtype=dtype, device=payload.device)
    n, codes = out.numel(), CODES_PER_PROGRAM
    _decode[(triton.cdiv(n, codes),)](payload, out, n, d, payload.numel() - 4 * d,
                                      OUT_KIND=KIND[dtype], QMAX=codec.qmax, BITS=codec.bits,
                                      N=codes, **LAUNCH)
    return out
