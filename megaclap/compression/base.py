"""What every codec shares: the Codec base class and the payload byte helpers.

A codec maps a tensor to ONE contiguous uint8 payload and back (megaclap/compression/codecs.py
documents the layouts). This module sits below every codec module, so codec modules import
it and never each other's internals.
"""

import math

import torch


def _numel(shape) -> int:
    return math.prod(shape)


def _as_dtype(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret a 1-D uint8 slice as `dtype`, copying it first if its offset is unaligned."""
    size = torch.empty((), dtype=dtype).element_size()
    if part.storage_offset() % size:
        part = part.clone()
    return part.view(dtype)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """Flat uint8 view of a tensor's bytes (a copy only if t is not contiguous)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


class Codec:
    """Base class: `spec` is the string it was parsed from."""

    spec = "?"

    def payload_nbytes(self, shape, dtype: torch.dtype) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, payload: torch.Tensor, shape, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def is_lossless(self, dtype: torch.dtype) -> bool:
        """True when decode(encode(x)) == x bit for bit for tensors of this dtype."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
