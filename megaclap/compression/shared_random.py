"""Randomness both ends of a boundary share: a counter-based integer hash, the same on every device.

Device RNGs cannot serve: on CUDA, torch's random kernels cap their launch grid by the number of
SMs and each element's value depends on that grid, so an H100 and an A100 draw different numbers
for one seed, and CPU and CUDA never agree. Every draw that both ends of a boundary (or a fused
kernel) must reproduce -- randk positions, hquant signs, stochastic-rounding noise, lowrank's
random start -- is instead a pure function of (per-call seed, stream, element index), computed
with integer tensor ops whose results torch defines on every device and dtype.

1. Per-call seed, Python ints (`step_seed`): z = 0; for v in (seed, step, boundary, direction
   (fwd 0, bwd 1), slot): z = mix64((z ^ v) * 0x9E3779B97F4A7C15 mod 2^64), mix64 being
   splitmix64's finaliser (below); the seed is z >> 1 (63 bits).
2. Per-use key (`stream_key(seed, stream)`), Python ints: z = splitmix64(seed + stream *
   0x9E3779B97F4A7C15 mod 2^64); k0 = z & 0xFFFFFFFF, k1 = z >> 32. Streams: RANDK 1, SIGNS 2,
   ROUNDING 3, LOWRANK 4, so one seed gives independent draws to each use.
3. Per-element hash of index i (0 <= i < 2^31), on 32-bit words, every product mod 2^32:

       x = i ^ k0
       x ^= x >> 16;  x = x * 0x21F0AAAD mod 2^32
       x ^= k1
       x ^= x >> 15;  x = x * 0x735A2D97 mod 2^32
       x ^= x >> 15                                  -> h in [0, 2^32)

   (Chris Wellons' lowbias32 mixer from hash-prospector, with the key xored in before each
   multiply.) In torch the words live in int64 tensors, masked to 32 bits after each multiply;
   both multipliers are below 2^31 and every word below 2^32, so every product is below 2^63:
   no signed overflow is relied on (torch does not define int32 wraparound). A Triton port may
   use uint32 with wrapping multiplies: the low 32 bits are the same.
4. Draws from h (exact integer or exactly representable float arithmetic, so every device and
   dtype gives the same values):

       sign        +1 if h < 2^31 else -1             the top bit
       below(L)    (h * L) >> 32                      integer in [0, L), for 1 <= L < 2^31
       centred     ((h >> 8) * 2 + 1 - 2^24) * 2^-24  fp32 in (-1, 1), exact (odd integers < 2^24)
       rounding    element e = 2^16 b + j (0 <= j < 2^16) uses h of the pair index
                   p = 2^15 b + (j mod 2^15): v = h >> 16 for j < 2^15, v = h & 0xFFFF
                   for j >= 2^15; u = v * 2^-16, fp32 in [0, 1), exact

Stochastic rounding (`stochastic_floor_`, quant's `:sr`) computes floor(y + u) with one IEEE
fp32 addition (u is exact): E[floor(y + u)] - y lies in (-2^-16, 0] of a level (16-bit uniforms,
two per hash: half the hashing of one per element), plus the rounding of the sum. On CPU the
hash loops run in chunks of 2^16 elements, in cache; the values depend on the index only, never
on the chunking.
"""

import torch

MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1, _MUL2 = 0x21F0AAAD, 0x735A2D97
MAX_ELEMENTS = 1 << 31  # element indices (and randk's stratum lengths) stay below this
RANDK, SIGNS, ROUNDING, LOWRANK = 1, 2, 3, 4
_DIRECTIONS = {"fwd": 0, "bwd": 1}
_CPU_CHUNK, _DEVICE_CHUNK = 1 << 16, 1 << 24
_BLOCK = 1 << 16  # rounding uniforms: two per hash within each block of 2^16 elements


def _mix64(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return z ^ (z >> 31)


def splitmix64(z: int) -> int:
    """One splitmix64 output for state z (Python ints, exact)."""
    return _mix64((z + _GOLDEN) & _MASK64)


def step_seed(seed: int, step: int, boundary: int, direction: str, slot: int) -> int:
    """Codec seed for one send, derived alike on both ends (63 bits; see the module docstring)."""
    z = 0
    for v in (seed, step, boundary, _DIRECTIONS[direction], slot):
        z = _mix64((z ^ (v & _MASK64)) * _GOLDEN & _MASK64)
    return z >> 1


def stream_key(seed: int, stream: int) -> tuple:
    """(k0, k1): the two 32-bit key words of one use (`stream`) of a per-call seed."""
    z = splitmix64((seed + stream * _GOLDEN) & _MASK64)
    return z & MASK32, z >> 32


def _check(stop: int) -> None:
    if stop > MAX_ELEMENTS:
        raise ValueError(f"shared random draws index at most 2^31 elements per tensor, got {stop}: "
                         f"split the boundary tensor (e.g. a smaller --micro-batch-size)")


def _mix_(x: torch.Tensor, tmp: torch.Tensor, k1: int) -> torch.Tensor:
    """In place: x = (i ^ k0) words -> their hashes (steps after the first xor); tmp: scratch."""
    torch.bitwise_right_shift(x, 16, out=tmp)
    x.bitwise_xor_(tmp).mul_(_MUL1).bitwise_and_(MASK32).bitwise_xor_(k1)
    torch.bitwise_right_shift(x, 15, out=tmp)
    x.bitwise_xor_(tmp).mul_(_MUL2).bitwise_and_(MASK32)
    torch.bitwise_right_shift(x, 15, out=tmp)
    return x.bitwise_xor_(tmp)


def chunk_size(device) -> int:
    """Elements per chunk of the hash loops: 2^16 on CPU (in cache), 2^24 elsewhere."""
    return _CPU_CHUNK if torch.device(device).type == "cpu" else _DEVICE_CHUNK


def hash_chunks(n: int, key: tuple, device, step: int = None):
    """Yield (start, h): h int64 [m], the hashes of indices start .. start + m - 1, chunk by
    chunk over 0 .. n - 1 (step: a power of two, default chunk_size). h is a reused buffer: use
    it before asking for the next chunk."""
    _check(n)
    step = step or chunk_size(device)
    base = torch.arange(min(n, step), dtype=torch.int64, device=device)
    h, tmp = torch.empty_like(base), torch.empty_like(base)
    for start in range(0, n, step):  # start is a multiple of step: start + j == start ^ j
        m = min(step, n - start)
        torch.bitwise_xor(base[:m], key[0] ^ start, out=h[:m])
        yield start, _mix_(h[:m], tmp[:m], key[1])


def rounding_chunks(n: int, key: tuple, device):
    """Yield (start, v): v int32 [m], the 16-bit rounding values of elements start .. start + m
    - 1 (u = v * 2^-16; see the module docstring), chunk by chunk. `v` is a reused buffer."""
    step, block, half = chunk_size(device), _BLOCK, _BLOCK // 2
    full, rest = divmod(n, block)
    out = torch.empty(min(n, step), dtype=torch.int32, device=device)
    for pair_start, h in hash_chunks(full * half + min(rest, half), key, device, step // 2):
        start = 2 * pair_start  # pair chunks start on a block: element start = 2 * pair start
        m = min(step, n - start)
        blocks = m // block
        if blocks:  # [blocks, 2, half]: first halves from the high bits, second from the low
            hb = h[: blocks * half].view(blocks, half)
            ob = out[: blocks * block].view(blocks, 2, half)
            torch.bitwise_right_shift(hb, 16, out=ob[:, 0])
            torch.bitwise_and(hb, 0xFFFF, out=ob[:, 1])
        if m > blocks * block:  # the last, shorter block: high bits first, low bits for the rest
            hv, ov = h[blocks * half:], out[blocks * block:m]
            torch.bitwise_right_shift(hv, 16, out=ov[: hv.numel()])
            torch.bitwise_and(hv[: ov.numel() - hv.numel()], 0xFFFF, out=ov[hv.numel():])
        yield start, out[:m]


def hash_range(n: int, key: tuple, device) -> torch.Tensor:
    """int64 [n]: the hashes of indices 0 .. n - 1."""
    out = torch.empty(n, dtype=torch.int64, device=device)
    for start, h in hash_chunks(n, key, device):
        out[start:start + h.numel()] = h
    return out


def signs(n: int, key: tuple, device) -> torch.Tensor:
    """fp32 [n] of +1 / -1: the top bit of each hash (set -> -1)."""
    return hash_range(n, key, device).bitwise_right_shift_(31).float().mul_(-2).add_(1)


def centred(n: int, key: tuple, device) -> torch.Tensor:
    """fp32 [n] in (-1, 1), symmetric: ((h >> 8) * 2 + 1 - 2^24) * 2^-24, exact."""
    h = hash_range(n, key, device).bitwise_right_shift_(8)
    return h.mul_(2).add_(1 - (1 << 24)).float().mul_(2.0 ** -24)


def below(lengths: torch.Tensor, key: tuple) -> torch.Tensor:
    """int64 [k]: for each j, (h_j * lengths[j]) >> 32, uniform in [0, lengths[j]) (< 2^31)."""
    return hash_range(lengths.numel(), key, lengths.device).mul_(lengths).bitwise_right_shift_(32)


def stochastic_floor_(y: torch.Tensor, key: tuple, lo: float, hi: float) -> torch.Tensor:
    """In place on a contiguous fp32 tensor: y <- clamp(floor(y + u), lo, hi), u the rounding
    uniform of each element's flat index: E[result] = y for y in [lo, hi] (to 2^-16 of a level)."""
    flat = y.view(-1)
    for start, v in rounding_chunks(flat.numel(), key, y.device):  # hash, add, floor in cache
        flat[start:start + v.numel()].add_(v, alpha=2.0 ** -16).floor_().clamp_(lo, hi)
    return y
