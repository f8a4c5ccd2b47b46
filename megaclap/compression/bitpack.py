"""The one bit packer of the codecs: w-bit unsigned values <-> a little-endian bitstream.

Value j occupies bits [j * w, (j + 1) * w) of the stream, lowest bit first, and bit b of the
stream is bit (b % 8) of byte b // 8; n values take ceil(n * w / 8) bytes, the unused high bits
of the last byte are zero. So w = 2 packs 4 values a byte (c0 | c1 << 2 | c2 << 4 | c3 << 6),
w = 3 packs 8 values into 3 bytes, w = 16 is little-endian uint16. Widths 1, 2, 4, 8 and 3 (the
quantiser codes) and 16 take fast paths; any other width up to 31 (index widths of sparse
codecs) goes through bit planes. Every path is a few vectorised torch ops (CPU and CUDA).
"""

import math

import torch


def packed_nbytes(n: int, width: int) -> int:
    return math.ceil(n * width / 8)


def pack_bits(values: torch.Tensor, width: int, out: torch.Tensor = None) -> torch.Tensor:
    """values [n] (uint8 for width <= 8, else an integer dtype; each < 2**width) -> uint8 bytes,
    written into `out` (a uint8 [packed_nbytes] slice) when given."""
    n = values.numel()
    nbytes = packed_nbytes(n, width)
    if out is None:
        out = torch.empty(nbytes, dtype=torch.uint8, device=values.device)
    if width == 8:
        out.copy_(values)
    elif width == 16:  # v - 65536 for v >= 32768: the same low 16 bits, in int16's range
        signed = values.to(torch.int32).bitwise_and_(0xFFFF).bitwise_xor_(0x8000).sub_(0x8000)
        out.view(torch.int16).copy_(signed)
    elif 8 % width == 0:
        _pack_small(values.to(torch.uint8), width, out)
    elif width == 3:
        _pack3(values, out)
    else:
        planes = torch.arange(width, device=values.device)
        bits = values.to(torch.int64).unsqueeze(1).bitwise_right_shift(planes)  # [n, w]
        bits.bitwise_and_(1)
        _pack_small(bits.to(torch.uint8).reshape(-1), 1, out)
    return out


def unpack_bits(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of pack_bits: n values, uint8 for width <= 8, else int64. Width 8 returns a view
    of `packed`; the other widths a fresh tensor."""
    if width == 8:
        return packed[:n]
    if width == 16:
        return _as_int16(packed[: 2 * n]).to(torch.int64).bitwise_and_(0xFFFF)
    if 8 % width == 0:
        return _unpack_small(packed, width, n)
    if width == 3:
        return _unpack3(packed, n)
    bits = _unpack_small(packed, 1, n * width).view(n, width).to(torch.int64)  # [n, w]
    weights = torch.ones(width, dtype=torch.int64, device=packed.device).bitwise_left_shift_(
        torch.arange(width, device=packed.device))
    return (bits * weights).sum(dim=1)


def _as_int16(part: torch.Tensor) -> torch.Tensor:
    return (part.clone() if part.storage_offset() % 2 else part).view(torch.int16)


def _pad(values: torch.Tensor, group: int) -> torch.Tensor:
    pad = (-values.numel()) % group
    return torch.cat([values, values.new_zeros(pad)]) if pad else values


def _pack_small(codes: torch.Tensor, width: int, out: torch.Tensor) -> None:
    """width in 1, 2, 4: 8 // width codes a byte, each a vectorised op on bytes."""
    per = 8 // width
    cols = _pad(codes, per).view(-1, per)  # [nbytes, per]
    out.copy_(cols[:, 0])
    for j in range(1, per):
        out.bitwise_or_(cols[:, j] << (width * j))


def _unpack_small(packed: torch.Tensor, width: int, n: int) -> torch.Tensor:
    per, nbytes = 8 // width, packed_nbytes(n, width)
    cols = torch.empty(nbytes, per, dtype=torch.uint8, device=packed.device)  # [nbytes, per]
    for j in range(per):
        torch.bitwise_right_shift(packed[:nbytes], width * j, out=cols[:, j])
    return cols.bitwise_and_((1 << width) - 1).view(-1)[:n]


def _pack3(codes: torch.Tensor, out: torch.Tensor) -> None:
    """8 codes -> one 24-bit little-endian word -> 3 bytes (the last group truncated)."""
    cols = _pad(codes, 8).view(-1, 8).to(torch.int32)  # [groups, 8]
    word = cols[:, 0].clone()
    for j in range(1, 8):
        word.bitwise_or_(cols[:, j] << (3 * j))
    three = torch.stack([(word >> (8 * k)) & 0xFF for k in range(3)], dim=1).to(torch.uint8)
    out.copy_(three.reshape(-1)[: out.numel()])


def _unpack3(packed: torch.Tensor, n: int) -> torch.Tensor:
    b = _pad(packed[: packed_nbytes(n, 3)], 3).view(-1, 3).to(torch.int32)  # [groups, 3]
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    cols = [(word >> (3 * j)) & 7 for j in range(8)]
    return torch.stack(cols, dim=1).reshape(-1)[:n].to(torch.uint8)
