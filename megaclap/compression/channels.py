"""Stateful compression channels for pipeline-parallel p2p (DESIGN.md section 4).

One Channel endpoint per (boundary, direction, microbatch slot) on each of the two ranks of a
boundary. x is what the stage sends, C the codec, m a reference held identically by both ends.

    method       sent                                  receiver uses   state
    none         x (the tensor itself)                 x               -
    direct       C(x)                                  C(x)            -
    ef           c = C(x + e); e <- x + e - c          c               e (sender only)
    ef21         c = C(x - m); m <- m + c              m               m per slot
    aqsgd        new sample: x_s, m_s <- x_s;          m_s             m per sample (store)
                 seen: c = C(x_s - m_s); m_s <- m_s + c
    clapping-fu  fresh: x raw, m <- x; else as ef21    m               m per slot
    clapping-fc  fresh: m <- 0 (or kept); as ef21      m               m per slot

clapping-fc's reference on a fresh batch (`fc_init`, --clapping-fc-init): `zero` and `previous`
are the paper's rules; `fresh-codec` is this project's extension, Clapping's fresh-step codec F
(`fresh_codec`, --clapping-fresh-codec): on a fresh step both Clapping methods send F(x) against
a zero reference (m <- F(x)) and reuse steps send deltas with C. F = identity is clapping-fu,
F = C is clapping-fc (zero init); None keeps each method's own rule (fu: identity, fc: C). A fresh
codec with fc_init `zero` means the same as `fresh-codec` (the spelling before the option).

How both ends stay bit-identical without sending m: the sender builds the payload
(`_encode`), then runs exactly the receiver's update (`_advance`) on its own payload bytes.
With a lossless codec (identity, or a cast to the tensor's own dtype) every method sends x's
raw bytes and sets m <- x, so results are bit-identical to uncompressed training.

Shape legend: x is `shape` (e.g. [b, s, h]); for aqsgd, `batch_dim` (default 0) is the axis of
the microbatch's samples and a row is x with that axis removed.
"""

from dataclasses import dataclass

import torch

from megaclap.config.compression import validate_compression

from .codecs import Codec, _as_dtype, _bytes, parse_codec
from .shared_random import step_seed
from .store import AqsgdStore

_REFERENCE = ("ef21", "clapping-fc", "clapping-fu")  # a dense m per slot
_DIRECTIONS = {"fwd": 0, "bwd": 1}

__all__ = ["AqsgdStore", "Channel", "ChannelStats", "step_seed"]


@dataclass
class ChannelStats:
    """Cumulative sender-side telemetry since the last reset(). Relative errors are kept as
    device tensors (no host sync per send) and converted when read."""

    raw_bytes: int = 0
    payload_bytes: int = 0
    steps: int = 0
    ref_memory_bytes: int = 0  # current m / e / store bytes (store: reported by slot 0 only)
    _err_last: object = 0.0
    _err_sum: object = 0.0
    _err_count: int = 0  # sends that measured their error (Channel.send(measure=True))

    @property
    def rel_err(self) -> float:
        """Last ||x_hat - x|| / ||x||."""
        return float(self._err_last)

    @property
    def rel_err_mean(self) -> float:
        return float(self._err_sum) / max(self._err_count, 1)

    @property
    def ratio(self) -> float:
        """payload / raw bytes (1.0 = no compression)."""
        return self.payload_bytes / max(self.raw_bytes, 1)

    def record(self, raw: int, payload: int, err) -> None:
        self.raw_bytes += raw
        self.payload_bytes += payload
        self.steps += 1
        if err is not None:
            self._err_last, self._err_sum, self._err_count = err, self._err_sum + err, self._err_count + 1

    def reset(self) -> None:
        """Start a new logging interval (ref_memory_bytes is a level, not a sum: kept)."""
        self.raw_bytes = self.payload_bytes = self.steps = 0
        self._err_last = self._err_sum = 0.0
        self._err_count = 0

    def as_dict(self) -> dict:
        return {"raw_bytes": self.raw_bytes, "payload_bytes": self.payload_bytes, "ratio": self.ratio,
                "steps": self.steps, "rel_err": self.rel_err, "rel_err_mean": self.rel_err_mean,
                "ref_memory_bytes": self.ref_memory_bytes}


class Channel:
    """One endpoint of a compressed p2p link. See the module docstring for the methods.

    Sender: payload = send(x, step=, fresh=, sample_ids=). Receiver: buf = empty_payload(...),
    fill buf from the wire, x_hat = recv(buf, step=, fresh=, sample_ids=). The tensor recv
    returns is never modified by the channel later (references are replaced, not updated in
    place), but it may alias the reference: callers must not modify it in place.
    """

    def __init__(self, method: str, codec, shape, dtype: torch.dtype, device, *, boundary: int,
                 direction: str, slot: int, fc_init: str = "zero", store: AqsgdStore = None,
                 seed: int = 0, batch_dim: int = 0, track_error: bool = True, fresh_codec=None):
        clapping = method in ("clapping-fu", "clapping-fc")
        validate_compression(method, fc_init=fc_init,
                             fresh_codec=getattr(fresh_codec, "spec", fresh_codec) if clapping else None)
        if direction not in _DIRECTIONS:
            raise ValueError(f"Channel direction must be 'fwd' or 'bwd', got {direction!r}")
        self.method, self.codec = method, parse_codec(codec) if isinstance(codec, str) else codec
        self.shape, self.dtype, self.device = tuple(shape), dtype, torch.device(device)
        self.boundary, self.direction, self.slot, self.fc_init = boundary, direction, slot, fc_init
        self.seed, self.batch_dim, self.track_error = seed, batch_dim % max(len(self.shape), 1), track_error
        self.row_shape = self.shape[:self.batch_dim] + self.shape[self.batch_dim + 1:]
        self.store = store
        if method == "aqsgd" and (store is None or tuple(store.row_shape) != self.row_shape):
            raise ValueError(f"aqsgd needs an AqsgdStore with row shape {self.row_shape} (one per boundary "
                             f"and direction, shared by its slots)")
        self.lossless = method == "none" or self.codec.is_lossless(dtype)
        if isinstance(fresh_codec, str):
            fresh_codec = parse_codec(fresh_codec, "--clapping-fresh-codec")
        self.fresh_codec = fresh_codec if clapping else None
        # fresh steps that send x raw and set m <- x: clapping-fu's rule, or a lossless fresh codec
        self.fresh_raw = (method == "clapping-fu" if self.fresh_codec is None
                          else self.fresh_codec.is_lossless(dtype))
        self.raw_nbytes = _numel(self.shape) * _itemsize(dtype)
        self.m = None  # reference, [*shape] (ef21 / clapping-*)
        self.e = None  # error-feedback residual, [*shape] (ef, sender only)
        self.factors = {}  # codec spec -> last Q [D, r] of a warm-started lowrank codec (both ends)
        self.stats = ChannelStats()
        self._buffer = None
        self._saved = None  # (m, e, factors) as of the last commit(), while this step changes them
        self.undo = True    # P2P turns it off when no step can be rolled back (no fp16)
        self._finite = None  # 0-dim fp32: 0 while every checked value was finite, else NaN

    # ---------------------------------------------------------------- sizes and buffers
    def payload_nbytes(self, *, fresh: bool, sample_ids=None) -> int:
        """Exact payload size for this step (both ends compute it alike)."""
        if self.lossless or (self.fresh_raw and fresh):
            return self.raw_nbytes
        if self.method == "aqsgd":
            new = int((self.store.find(sample_ids) < 0).sum())
            old = self.shape[self.batch_dim] - new
            row_bytes = self.raw_nbytes // self.shape[self.batch_dim]
            compressed = self.codec.payload_nbytes((old, *self.row_shape), self.dtype) if old else 0
            return new * row_bytes + compressed
        return self._step_codec(fresh).payload_nbytes(self.shape, self.dtype)

    def empty_payload(self, *, fresh: bool, sample_ids=None) -> torch.Tensor:
        """Receive buffer of this step's exact payload size: a new [*shape] tensor for `none`,
        else a prefix of one reused uint8 buffer (valid until this endpoint's next call)."""
        if self.method == "none":
            return torch.empty(self.shape, dtype=self.dtype, device=self.device)
        n = self.payload_nbytes(fresh=fresh, sample_ids=sample_ids)
        if self._buffer is None or self._buffer.numel() < n:
            self._buffer = torch.empty(n, dtype=torch.uint8, device=self.device)
        return self._buffer[:n]

    # ---------------------------------------------------------------- the two ends
    @torch.no_grad()
    def send(self, x: torch.Tensor, *, step: int, fresh: bool, sample_ids=None, measure: bool = True) -> torch.Tensor:
        """Sender: payload to put on the wire (x itself for `none`, else flat uint8). measure=False
        skips the telemetry error (and, for `direct`, the sender's decode, which only it needs)."""
        if tuple(x.shape) != self.shape or x.dtype != self.dtype:
            raise ValueError(f"Channel {self._name()} expects {self.shape} {self.dtype}, "
                             f"got {tuple(x.shape)} {x.dtype}")
        x = x.detach()
        self._begin(fresh)
        seed = step_seed(self.seed, step, self.boundary, self.direction, self.slot)
        payload = self._encode(x, seed, fresh, sample_ids)
        if self.method == "direct" and not measure:
            self._keep_factor(self.codec, payload, self.shape)
            self.stats.record(self.raw_nbytes, payload.numel() * payload.element_size(), None)
            self._check(x)
            return payload
        x_hat = self._advance(payload, seed, fresh, sample_ids)
        if self.method == "ef" and not self.lossless:
            self.e = (x if self.e is None else x + self.e) - x_hat
        self._check(x, None if self.lossless else x_hat, self.e)
        err = 0.0 if measure else None
        if measure and self.track_error and not self.lossless:
            diff = torch.linalg.vector_norm(x_hat.float() - x.float())
            err = diff / torch.linalg.vector_norm(x.float()).clamp_min(1e-30)
        self.stats.record(self.raw_nbytes, payload.numel() * payload.element_size(), err)
        self.stats.ref_memory_bytes = self.ref_memory_bytes
        return payload

    @torch.no_grad()
    def recv(self, payload: torch.Tensor, *, step: int, fresh: bool, sample_ids=None) -> torch.Tensor:
        """Receiver: the dense [*shape] tensor to use in place of x."""
        expect = self.payload_nbytes(fresh=fresh, sample_ids=sample_ids)
        if payload.numel() * payload.element_size() != expect:
            raise ValueError(f"Channel {self._name()}: payload of {payload.numel() * payload.element_size()} "
                             f"bytes, expected {expect}")
        self._begin(fresh)
        seed = step_seed(self.seed, step, self.boundary, self.direction, self.slot)
        x_hat = self._advance(payload, seed, fresh, sample_ids)
        self._check(x_hat)
        return x_hat

    @property
    def ref_memory_bytes(self) -> int:
        """Bytes of state this endpoint holds (m or e; the AQ-SGD store is counted on slot 0)."""
        own = sum(t.numel() * t.element_size() for t in (self.m, self.e, *self.factors.values())
                  if t is not None)
        return own + (self.store.nbytes if self.method == "aqsgd" and self.slot == 0 else 0)

    # ---------------------------------------------------------------- the shared state machine
    def _begin(self, fresh: bool) -> None:
        """State change at the start of a step, before anything is encoded (both ends)."""
        self._remember()
        if fresh and (self.fresh_codec is not None or (self.method == "clapping-fc" and self.fc_init == "zero")):
            self.m = None  # read as zeros

    def _step_codec(self, fresh: bool):
        """The codec of this step's payload: the fresh-step codec on a fresh Clapping step."""
        return self.fresh_codec if fresh and self.fresh_codec is not None else self.codec

    def _ref(self) -> torch.Tensor:
        if self.m is None:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return self.m

    def _encode(self, x: torch.Tensor, seed: int, fresh: bool, sample_ids) -> torch.Tensor:
        """Sender only: the payload for x given the state before this step's update."""
        if self.method == "none":
            return x
        if self.lossless or (self.fresh_raw and fresh):
            return _bytes(x)
        if self.method == "direct":
            return self._codec_encode(self.codec, x, seed)
        if self.method == "ef":
            return self._codec_encode(self.codec, x if self.e is None else x + self.e, seed)
        if self.method == "aqsgd":
            return self._encode_aqsgd(x, seed, sample_ids)
        return self._codec_encode(self._step_codec(fresh), x - self._ref(), seed)  # ef21, clapping-*

    def _advance(self, payload: torch.Tensor, seed: int, fresh: bool, sample_ids) -> torch.Tensor:
        """Both ends: decode the payload, update the reference, return what the receiver uses."""
        if self.method == "none":
            return payload
        if self.method == "aqsgd":
            return self._advance_aqsgd(payload, seed, sample_ids)
        if self.lossless or (self.fresh_raw and fresh):
            x_hat = _as_dtype(payload, self.dtype).reshape(self.shape).clone()
            if self.method in _REFERENCE:
                self.m = x_hat
            return x_hat.detach()
        c = self._codec_decode(self._step_codec(fresh), payload, self.shape, seed)
        if self.method in ("direct", "ef"):
            return c
        self.m = c if self.m is None else self.m + c  # out of place: returned tensors never change
        return self.m.detach()

    def _codec_encode(self, codec, x: torch.Tensor, seed: int) -> torch.Tensor:
        """codec.encode, warm-started from this channel's last factor for `lowrank:R:warm`."""
        if getattr(codec, "warm", False):
            return codec.encode(x, seed, start=self.factors.get(codec.spec))
        return codec.encode(x, seed)

    def _codec_decode(self, codec, payload: torch.Tensor, shape, seed: int) -> torch.Tensor:
        self._keep_factor(codec, payload, shape)
        return codec.decode(payload, shape, self.dtype, seed)

    def _keep_factor(self, codec, payload: torch.Tensor, shape) -> None:
        """Both ends: a warm lowrank payload's Q becomes the next start (a new dict: the copy
        kept for rollback stays as it was)."""
        if getattr(codec, "warm", False):
            self.factors = {**self.factors, codec.spec: codec.factors(payload, shape, self.dtype)[1]}

    # ---------------------------------------------------------------- aqsgd
    def _split_rows(self, sample_ids):
        """(rows in the store or -1, mask of first visits) for this microbatch's samples."""
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        if len(ids) != self.shape[self.batch_dim]:
            raise ValueError(f"Channel {self._name()}: {len(ids)} sample ids for a batch dim of "
                             f"{self.shape[self.batch_dim]}")
        rows = self.store.find(ids)
        return ids, rows, rows < 0

    def _encode_aqsgd(self, x: torch.Tensor, seed: int, sample_ids) -> torch.Tensor:
        _, rows, new = self._split_rows(sample_ids)
        xb = x.movedim(self.batch_dim, 0)  # [b, *row]
        parts = []
        if new.any():
            parts.append(_bytes(xb[new.to(x.device)]))
        if (~new).any():
            delta = xb[(~new).to(x.device)] - self.store.read(rows[~new])
            parts.append(self._codec_encode(self.codec, delta, seed))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _advance_aqsgd(self, payload: torch.Tensor, seed: int, sample_ids) -> torch.Tensor:
        ids, rows, new = self._split_rows(sample_ids)
        out = torch.empty((len(ids), *self.row_shape), dtype=self.dtype, device=self.device)  # [b, *row]
        if self.lossless:
            out.copy_(_as_dtype(payload, self.dtype).reshape(self.shape).movedim(self.batch_dim, 0))
        else:
            n_new = int(new.sum())
            cut = n_new * (self.raw_nbytes // len(ids))
            old = ~new
            if n_new:
                raw = _as_dtype(payload[:cut], self.dtype).reshape(n_new, *self.row_shape)
                out[new.to(self.device)] = raw
            if old.any():
                shape = (len(ids) - n_new, *self.row_shape)
                c = self._codec_decode(self.codec, payload[cut:], shape, seed)
                out[old.to(self.device)] = self.store.read(rows[old]) + c
        self.store.write(self.store.insert(ids), out)
        return out.movedim(0, self.batch_dim)

    # ---------------------------------------------------------------- finiteness of the step
    def _check(self, *tensors) -> None:
        """Fold tensors this endpoint sent, received or keeps into its finite check, on the device
        (no host read): sum * 0 is 0 for finite values, NaN once any is inf or NaN. The fp32 sum
        of fp16/bf16 values cannot overflow. `none` checks nothing: its values reach the gradients."""
        if self.method == "none":
            return
        for t in tensors:
            if t is not None:
                flag = t.sum(dtype=torch.float32).mul_(0.0)
                self._finite = flag if self._finite is None else self._finite.add_(flag)

    def take_finite_check(self):
        """This endpoint's check since the last call (0-dim fp32 device tensor: 0 if every value
        it sent, received or now keeps was finite, else NaN), or None if nothing was checked.
        The trainer folds it into the step's skip decision, so a non-finite reference or
        residual is never committed."""
        flag, self._finite = self._finite, None
        return flag

    # ---------------------------------------------------------------- step commit / rollback
    def _remember(self) -> None:
        """Keep the committed (m, e, factors) before this step's first change. They are always
        replaced, never updated in place, so keeping the old objects is the whole snapshot."""
        if self.undo and self._saved is None:
            self._saved = (self.m, self.e, self.factors)

    def commit(self) -> None:
        """The step's changes stand (the optimizer stepped). The AQ-SGD store commits separately."""
        self._saved = None

    def rollback(self) -> None:
        """Undo every change to m, e and factors since the last commit() (the optimizer skipped
        the step, e.g. on an fp16 overflow). Both ends call it on the same steps: they stay equal."""
        if self._saved is not None:
            self.m, self.e, self.factors = self._saved
            self._saved = None
            self.stats.ref_memory_bytes = self.ref_memory_bytes

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """References, residuals and warm lowrank factors (the AQ-SGD store is saved through
        its own state_dict)."""
        return {"method": self.method, "codec": self.codec.spec, "m": self.m, "e": self.e,
                "factors": dict(self.factors)}

    def load_state_dict(self, sd: dict) -> None:
        if sd["method"] != self.method:
            raise ValueError(f"Channel {self._name()}: checkpoint has method {sd['method']!r}, "
                             f"this run uses {self.method!r} (--pp-compression-method)")
        self.m = None if sd["m"] is None else sd["m"].to(self.device, self.dtype).clone()
        self.e = None if sd["e"] is None else sd["e"].to(self.device, self.dtype).clone()
        self.factors = {k: v.to(self.device).clone() for k, v in sd.get("factors", {}).items()}
        self._saved = None

    def _name(self) -> str:
        return f"{self.method}[b{self.boundary}/{self.direction}/slot{self.slot}]"


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
