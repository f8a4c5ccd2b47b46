"""Stage-to-stage communication. Every tensor that crosses a boundary goes through a Channel.

Boundary b sits between stages b and b+1. Activations travel forward on it (b -> b+1),
their gradients backward (b+1 -> b). There is one Channel per (boundary, direction,
microbatch slot) on each of the two ranks of a boundary; the sender's Channel encodes, the
receiver's decodes, and stateful methods keep identical references on both sides.

Shapes are fixed per run (micro batch, seq, hidden), so receive buffers come preallocated
from the Channel (their size may differ from the dense tensor's) and no shape handshake is
needed. Sends are asynchronous; every wait has the --distributed-timeout-minutes timeout.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megaclap.compression.channels import AqsgdStore, Channel
from megaclap.parallel.simlink import SimLink


def evaluation_compression(c):
    """Evaluation's p2p: uncompressed by default; with --eval-with-compression the forward codec
    applied directly (what a biased codec imposes), never touching training's references."""
    method = "direct" if c.eval_with_compression and c.method != "none" else "none"
    return dataclasses.replace(c, method=method, bwd_method="none", bwd_codec="identity",
                               fwd_codec=c.fwd_codec if method == "direct" else "identity",
                               clapping_fresh_codec=None)


@dataclass
class StepInfo:
    """What every Channel call needs to know about the current step, identical on all ranks."""

    step: int
    fresh: bool


class P2P:
    """Send/recv activations and gradients of one stage, through Channels.

    method/bwd_method/fwd_codec/bwd_codec: see megaclap.compression; method 'none' sends the
    dense tensor itself (bit-identical to uncompressed training).
    """

    def __init__(self, pstate, shape: tuple, wire_dtype: torch.dtype, compression, seed: int = 0,
                 link: Optional[SimLink] = None):
        from megaclap.compression.channels import default_bwd_method
        from megaclap.compression.codecs import parse_codec
        self.pstate, self.shape, self.dtype, self.seed = pstate, tuple(shape), wire_dtype, seed
        c = compression
        bwd = c.bwd_method or default_bwd_method(c.method)
        self.methods = {"fwd": (c.method, parse_codec(c.fwd_codec)), "bwd": (bwd, parse_codec(c.bwd_codec))}
        self.fc_init, self.store_dir = c.clapping_fc_init, c.aqsgd_store_dir
        self.fresh_codec = c.clapping_fresh_codec
        self.channels: dict = {}
        self.stores: dict = {}
        self.pending: list = []  # (work, payload) of sends not yet completed
        self.link = link  # simulated slow link (megaclap.parallel.simlink), or None

    def _store(self, boundary: int, direction: str) -> Optional[AqsgdStore]:
        if self.methods[direction][0] != "aqsgd":
            return None
        key = (boundary, direction)
        if key not in self.stores:
            path = None
            if self.store_dir:
                path = f"{self.store_dir}/aqsgd_b{boundary}_{direction}_dp{self.pstate.dp_rank}_tp{self.pstate.tp_rank}"
            self.stores[key] = AqsgdStore(self.shape[1:], self.dtype, self.pstate.device, path=path)
        return self.stores[key]

    def channel(self, boundary: int, direction: str, slot: int) -> Channel:
        key = (boundary, direction, slot)
        if key not in self.channels:
            method, codec = self.methods[direction]
            self.channels[key] = Channel(method, codec, self.shape, self.dtype, self.pstate.device,
                                         boundary=boundary, direction=direction, slot=slot,
                                         fc_init=self.fc_init, store=self._store(boundary, direction),
                                         seed=self.seed, fresh_codec=self.fresh_codec)
        return self.channels[key]

    # --- primitives --------------------------------------------------------------------
    def _send(self, x: torch.Tensor, peer: int, boundary: int, direction: str, slot: int,
              info: StepInfo, ids: torch.Tensor) -> None:
        ch = self.channel(boundary, direction, slot)
        payload = ch.send(x.detach().to(self.dtype), step=info.step, fresh=info.fresh, sample_ids=ids)
        payload = payload.contiguous()
        self.pending = [(w, p) for w, p in self.pending if not w.is_completed()]  # free sent buffers
        self.pending.append((dist.isend(payload, peer), payload))
        if self.link is not None:
            stamp = self.link.stamp()
            self.pending.append((dist.isend(stamp, peer), stamp))

    def _recv(self, peer: int, boundary: int, direction: str, slot: int, info: StepInfo,
              ids: torch.Tensor) -> torch.Tensor:
        ch = self.channel(boundary, direction, slot)
        buf = ch.empty_payload(fresh=info.fresh, sample_ids=ids)
        dist.irecv(buf, peer).wait(timeout=self.pstate.timeout)
        if self.link is not None:
            stamp = self.link.empty_stamp()
            dist.irecv(stamp, peer).wait(timeout=self.pstate.timeout)
            self.link.deliver((peer, direction), buf, stamp)
        return ch.recv(buf, step=info.step, fresh=info.fresh, sample_ids=ids)

    def wait_sends(self) -> None:
        """Complete every outstanding send (before the step ends, so buffers can be reused)."""
        for work, _ in self.pending:
            work.wait(timeout=self.pstate.timeout)
        self.pending.clear()

    # --- the four operations a schedule uses -------------------------------------------
    def recv_forward(self, slot: int, info: StepInfo, ids: torch.Tensor) -> torch.Tensor:
        """Activation from the previous stage, as a leaf that will collect its gradient."""
        x = self._recv(self.pstate.prev_rank, self.pstate.pp_rank - 1, "fwd", slot, info, ids)
        # a new tensor object: the Channel may return its reference m itself, which must not
        # become an autograd leaf that accumulates .grad across steps
        return x.detach().float().requires_grad_(True)

    def send_forward(self, y: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor) -> None:
        self._send(y, self.pstate.next_rank, self.pstate.pp_rank, "fwd", slot, info, ids)

    def recv_backward(self, slot: int, info: StepInfo, ids: torch.Tensor) -> torch.Tensor:
        """Gradient of this stage's output, from the next stage."""
        return self._recv(self.pstate.next_rank, self.pstate.pp_rank, "bwd", slot, info, ids).float()

    def send_backward(self, g: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor) -> None:
        self._send(g, self.pstate.prev_rank, self.pstate.pp_rank - 1, "bwd", slot, info, ids)

    # --- checkpoint state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"channels": {f"{b}/{d}/{s}": ch.state_dict() for (b, d, s), ch in self.channels.items()},
                "stores": {f"{b}/{d}": st.state_dict() for (b, d), st in self.stores.items()}}

    def load_state_dict(self, sd: dict) -> None:
        for key, st in sd.get("stores", {}).items():
            b, d = key.split("/")
            self._store(int(b), d).load_state_dict(st)
        for key, cs in sd.get("channels", {}).items():
            b, d, s = key.split("/")
            self.channel(int(b), d, int(s)).load_state_dict(cs)
