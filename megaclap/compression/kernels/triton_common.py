"""Triton building blocks every codec kernel shares, each the exact twin of a torch reference.

    hash32        shared_random's per-element hash (uint32 words, wrapping multiplies: the low
                  32 bits of the reference's int64 products)
    rounding_u    shared_random's 16-bit rounding uniform of a flat element index, as fp32
    reciprocal    IEEE 1 / x (tl.math.div_rn) for x > 0
    round_even    round half to even (torch.round), by the 1.5 * 2^23 trick: exact for |y| < 2^22
    floor_exact   floor from round_even (tl.floor flushes subnormals on CUDA)
    bf16_bits     fp32 -> bf16 bits, round to nearest even (torch's rule; Triton's interpreter
                  truncates in `.to(tl.bfloat16)`, so the kernels never use that cast)
    load_f32, store_as   read any float dtype as fp32; store fp32 as fp32 / fp16 / bf16
    store_codes, load_codes   bitpack.py's little-endian bitstream, 1, 2, 3, 4 or 8 bits a code

Every kernel is launched with enable_fp_fusion=False (`LAUNCH`): Triton contracts a * b + c into
one FMA by default, which rounds once where torch's separate multiply and add round twice.
Divisions are tl.math.div_rn (IEEE, as torch's), never `/` (an approximate division on CUDA).
"""
import torch
import triton
import triton.language as tl

LAUNCH = dict(enable_fp_fusion=False)
MUL1, MUL2 = tl.constexpr(0x21F0AAAD), tl.constexpr(0x735A2D97)  # shared_random's multipliers
MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23
KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # the OUT_KIND of store_as


def new_payload(codec, x: torch.Tensor) -> torch.Tensor:
    """An uninitialised uint8 payload of codec's size for x."""
    return torch.empty(codec.payload_nbytes(x.shape, x.dtype), dtype=torch.uint8, device=x.device)


def key_words(key: tuple) -> tuple:
    """(k0, k1) uint32 key words as int32 bit patterns (Triton types a Python int >= 2^31 as
    int64; the kernels bitcast these back to uint32)."""
    return tuple(k - (1 << 32) if k >= 1 << 31 else k for k in key)


@triton.jit
def hash32(i, k0, k1):
    """uint32 [..] hashes of the uint32 indices i; k0, k1: int32 bit patterns of the key words."""
    x = i ^ k0.to(tl.uint32, bitcast=True)
    x ^= x >> 16
    x = x * tl.full((), MUL1, tl.uint32)
    x ^= k1.to(tl.uint32, bitcast=True)
    x ^= x >> 15
    x = x * tl.full((), MUL2, tl.uint32)
    return x ^ (x >> 15)


@triton.jit
def rounding_u(e, k0, k1):
    """fp32 u in [0, 1) of the int64 flat element indices e (shared_random's rounding stream):
    e = 2^16 b + j uses the hash of pair 2^15 b + (j mod 2^15), high half for j < 2^15."""
    j = e & 0xFFFF
    pair = (e >> 16) * 32768 + (j & 0x7FFF)
    h = hash32(pair.to(tl.uint32), k0, k1)
    v = tl.where(j < 32768, h >> 16, h & 0xFFFF)
    return v.to(tl.float32) * (1.0 / 65536.0)


@triton.jit
def round_even(y):
    """Round half to even, for |y| < 2^22 (the codes' range); two exactly rounded additions."""
    return (y + MAGIC) - MAGIC


@triton.jit
def reciprocal(x):
    """IEEE 1 / x where x > 0 (torch.reciprocal); 0 elsewhere (callers mask those out)."""
    pos = x > 0
    one = tl.full(x.shape, 1.0, tl.float32)
    return tl.where(pos, tl.math.div_rn(one, tl.where(pos, x, 1.0)), 0.0)


@triton.jit
def floor_exact(y):
    """floor(y) for |y| < 2^22 without tl.floor, which compiles to cvt.rmi.ftz (a negative
    subnormal would floor to -0 instead of -1)."""
    r = round_even(y)
    return r - tl.where(r > y, 1.0, 0.0)


@triton.jit
def bf16_bits(x):
    """uint16 bits of bf16(x), round to nearest even; NaN -> 0x7FC0 (torch's CPU rule)."""
    b = x.to(tl.uint32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, r).to(tl.uint16)


@triton.jit
def load_f32(ptr, offs, mask, IN_KIND: tl.constexpr):
    """fp32 values of a float tensor of kind IN_KIND (KIND above) at offs (0 where masked)."""
    if IN_KIND == 1:  # bf16: the bits shifted up (exact; independent of the interpreter's casts)
        bits = tl.load(ptr.to(tl.pointer_type(tl.uint16)) + offs, mask=mask, other=0)
        return (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_as(ptr, offs, value, mask, OUT_KIND: tl.constexpr):
    """Store fp32 `value` into a tensor of kind OUT_KIND, rounding to nearest even."""
    if OUT_KIND == 1:
        tl.store(ptr.to(tl.pointer_type(tl.uint16)) + offs, bf16_bits(value), mask=mask)
    elif OUT_KIND == 2:
        tl.store(ptr.to(tl.pointer_type(tl.float16)) + offs, value.to(tl.float16), mask=mask)
    else:
        tl.store(ptr.to(tl.pointer_type(tl.float32)) + offs, value, mask=mask)


@triton.jit
def store_codes(dst, byte0, codes, nbytes, N: tl.constexpr, BITS: tl.constexpr):
    """Pack codes uint32 [N] (N a multiple of 8, each < 2^BITS, BITS in 1, 2, 3, 4, 8) into the
    little-endian bitstream of bitpack.py and store its N * BITS / 8 bytes at dst + byte0 (bytes
    at or past nbytes are not written)."""
    if BITS == 3:  # 8 codes -> one 24-bit word -> 3 bytes
        word = tl.sum(tl.reshape(codes, (N // 8, 8)) << (tl.arange(0, 8) * 3)[None, :], axis=1)
        k = tl.arange(0, 4)[None, :]  # [1, 4]: bytes 0..2 of each word (3 is unused)
        offs = byte0 + tl.arange(0, N // 8)[:, None] * 3 + k
        tl.store(dst + offs, ((word[:, None] >> (k * 8)) & 0xFF).to(tl.uint8),
                 mask=(k < 3) & (offs < nbytes))
    else:
        per: tl.constexpr = 8 // BITS
        shifts = (tl.arange(0, per) * BITS)[None, :]
        packed = tl.sum(tl.reshape(codes, (N // per, per)) << shifts, axis=1)
        offs = byte0 + tl.arange(0, N // per)
        tl.store(dst + offs, packed.to(tl.uint8), mask=offs < nbytes)


@triton.jit
def load_codes(src, byte0, nbytes, N: tl.constexpr, BITS: tl.constexpr):
    """uint32 [N] codes of the bitstream at src (uint8), starting at byte byte0 (inverse of
    store_codes; bytes at or past nbytes read as 0)."""
    if BITS == 3:
        g = byte0 + tl.arange(0, N // 8) * 3  # [N / 8] first byte of each 3-byte group
        word = tl.zeros((N // 8,), tl.uint32)
        for k in tl.static_range(3):
            b = tl.load(src + g + k, mask=g + k < nbytes, other=0)
            word |= b.to(tl.uint32) << (8 * k)
        return tl.reshape((word[:, None] >> (tl.arange(0, 8) * 3)[None, :]) & 7, (N,))
    else:
        per: tl.constexpr = 8 // BITS
        offs = byte0 + tl.arange(0, N // per)
        b = tl.load(src + offs, mask=offs < nbytes, other=0).to(tl.uint32)
        codes = (b[:, None] >> (tl.arange(0, per) * BITS)[None, :]) & ((1 << BITS) - 1)
        return tl.reshape(codes, (N,))
