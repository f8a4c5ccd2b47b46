"""Stage-to-stage communication. Every tensor that crosses a boundary goes through a Channel.

Boundary b sits between stages b and b+1. Activations travel forward on it (b -> b+1),
their gradients backward (b+1 -> b). There is one Channel per (boundary, direction,
microbatch slot) on each of the two ranks of a boundary; the sender's Channel encodes, the
receiver's decodes, and stateful methods keep identical references on both sides.

Transport (the way NCCL needs it, as Megatron-LM does): every operation below is ONE
`batch_isend_irecv` group. 1F1B's steady state uses the combined operations
send_forward_recv_backward / send_backward_recv_forward, so a send and the opposite-direction
receive between two stages always go out together and never cross (an unbatched send may
block until its receive is posted). A group's receives are waited for before their tensors are
used; its sends complete in the background (wait_sends() at the end of the step). There is no
host-side timed wait: a peer that never answers fails the pipeline group's own timeout
(--distributed-timeout-minutes), re-raised naming that peer.

Tensor-parallel split boundary: with tp > 1 the boundary tensor (b, s, h) is identical on every
tp rank, so tp rank t encodes and sends only its sequence slice [:, t*s/tp:(t+1)*s/tp] to the
same tp rank of the neighbouring stage, and the receiver all-gathers the slices within its tp
group. Inter-stage bytes do not grow with tp; Channels (and their references) hold the slice.
The gradient of the gathered input is identical on all tp ranks (the first tp layer's
copy_to_tp all-reduces it), so each tp rank sends back the same slice of it.

Shapes are fixed per run, so receive buffers come preallocated from the Channel and no shape
handshake is needed. With a simulated link (megaclap.parallel.simlink) each payload travels with
the sender's clock and the receiver waits for its simulated arrival.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megaclap.compression.channels import AqsgdStore, Channel
from megaclap.compression.store import store_path
from megaclap.errors import UserError
from megaclap.parallel.emulate import LocalMember
from megaclap.parallel.simlink import SimLink
from megaclap.training.timers import Timers


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
    measure: bool = True  # senders compute their telemetry error (the trainer: log steps only)
    drawn: int = 0        # the fresh step that drew this step's batch (== step when fresh)
    rng_seed: Optional[int] = None  # seed dropout per microbatch from its samples (None: don't)


@dataclass
class Op:
    """One point-to-point operation of a group: send or receive `tensor` to/from global `peer`.
    `tag` (direction, slot, part) names the message; transports may ignore it."""

    send: bool
    tensor: torch.Tensor
    peer: int
    tag: tuple


class PeerTimeout(UserError, RuntimeError):
    """A pipeline neighbour did not answer within --distributed-timeout-minutes (a UserError:
    the job ends with its one line)."""


def dist_transport(group) -> Callable:
    """The real transport: one batch_isend_irecv group on the pipeline process group."""
    def run(ops: list) -> list:
        return dist.batch_isend_irecv([dist.P2POp(dist.isend if o.send else dist.irecv, o.tensor, o.peer,
                                                  group=group) for o in ops])
    return run


def _independent_ops(group) -> bool:
    """Whether p2p operations progress independently of each other (gloo) rather than in one
    ordered stream per peer (NCCL)."""
    if group is None or isinstance(group, LocalMember):
        return False
    return dist.get_backend(group) == "gloo"


@dataclass
class _Recv:
    buf: torch.Tensor
    stamp: Optional[torch.Tensor]
    peer: int
    boundary: int
    direction: str
    slot: int
    ids: torch.Tensor


class P2P:
    """Send/recv activations and gradients of one stage, through Channels.

    method/bwd_method/fwd_codec/bwd_codec: see megaclap.compression; method 'none' sends the
    dense tensor itself (bit-identical to uncompressed training). shape is the full boundary
    tensor (b, s, h); with tp > 1 Channels hold (b, s/tp, h). Operations involving a missing
    neighbour (recv_forward on the first stage, ...) do nothing and return None.
    """

    def __init__(self, pstate, shape: tuple, wire_dtype: torch.dtype, compression, seed: int = 0,
                 link: Optional[SimLink] = None, undo: bool = True):
        """undo: keep what a step changes in Channels and stores until commit(), so rollback()
        can restore it; off when no step can be skipped (no fp16 loss scaler)."""
        from megaclap.config.compression import default_bwd_method
        from megaclap.compression.codecs import parse_codec
        self.pstate, self.dtype, self.link, self.undo = pstate, wire_dtype, link, undo
        self.full_shape, self.tp = tuple(shape), pstate.tp_size
        b, s, h = self.full_shape
        if s % self.tp:
            raise ValueError(f"--seq-length {s} is not divisible by --tensor-model-parallel-size {self.tp} "
                             "(the pipeline boundary is split across tp ranks by sequence)")
        self.shape = (b, s // self.tp, h)  # this tp rank's slice of the boundary tensor
        self.seed = seed + 1_000_003 * pstate.tp_rank  # tp slices draw independent codec randomness
        c = compression
        bwd = c.bwd_method or default_bwd_method(c.method)
        self.methods = {"fwd": (c.method, parse_codec(c.fwd_codec)), "bwd": (bwd, parse_codec(c.bwd_codec))}
        self.fc_init, self.store_dir = c.clapping_fc_init, c.aqsgd_store_dir
        self.fresh_codec = c.clapping_fresh_codec
        self.channels: dict = {}
        self.stores: dict = {}
        self.pending: list = []  # (work, Op) of sends not yet completed (the Op keeps its tensor alive)
        group = getattr(pstate.pp, "group", None)
        # an emulated pipeline's stages talk through an in-process mailbox (parallel/emulate.py)
        local = isinstance(group, LocalMember)
        self.transport = pstate.transport() if local else dist_transport(group)
        self.timers = Timers(0)  # the trainer's per-phase timers (--timing-log-level)
        self.early_recv = _independent_ops(group)
        self.posted: dict = {}  # (direction, slot) -> (waits, _Recv) of receives posted early

    def _store(self, boundary: int, direction: str) -> Optional[AqsgdStore]:
        if self.methods[direction][0] != "aqsgd":
            return None
        key = (boundary, direction)
        if key not in self.stores:
            path = store_path(self.store_dir, boundary, direction, self.pstate.pp_rank, self.pstate.dp_rank,
                              self.pstate.tp_rank)
            self.stores[key] = AqsgdStore(self.shape[1:], self.dtype, self.pstate.device, path=path)
            self.stores[key].undo = self.undo
        return self.stores[key]

    def channel(self, boundary: int, direction: str, slot: int) -> Channel:
        key = (boundary, direction, slot)
        if key not in self.channels:
            method, codec = self.methods[direction]
            self.channels[key] = Channel(method, codec, self.shape, self.dtype, self.pstate.device,
                                         boundary=boundary, direction=direction, slot=slot,
                                         fc_init=self.fc_init, store=self._store(boundary, direction),
                                         seed=self.seed, fresh_codec=self.fresh_codec)
            self.channels[key].undo = self.undo
        return self.channels[key]

    # --- building blocks -----------------------------------------------------------------
    def _slice(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return x
        n = self.shape[1]
        return x[:, self.pstate.tp_rank * n:(self.pstate.tp_rank + 1) * n]

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s/tp, h) slices of the tp group -> (b, s, h)."""
        if self.tp == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.tp)]
        dist.all_gather(parts, x.contiguous(), group=self.pstate.tp.group)
        return torch.cat(parts, dim=1)

    def _encode(self, x: torch.Tensor, peer: int, boundary: int, direction: str, slot: int,
                info: StepInfo, ids: torch.Tensor) -> list:
        ch = self.channel(boundary, direction, slot)
        with self.timers.phase("encode"):
            local = self._slice(x.detach()).to(self.dtype).contiguous()
            payload = ch.send(local, step=info.step, fresh=info.fresh, sample_ids=ids,
                              measure=info.measure).contiguous()
        nbytes = payload.numel() * payload.element_size()
        self.timers.sent(direction, nbytes)  # the time model's payload bytes per message
        ops = [Op(True, payload, peer, (direction, slot, "payload"))]
        if self.link is not None:
            ops.append(Op(True, self.link.stamp(peer, nbytes), peer, (direction, slot, "stamp")))
        return ops

    def _post(self, peer: int, boundary: int, direction: str, slot: int, info: StepInfo,
              ids: torch.Tensor) -> tuple[list, _Recv]:
        buf = self.channel(boundary, direction, slot).empty_payload(fresh=info.fresh, sample_ids=ids)
        stamp = self.link.empty_stamp() if self.link is not None else None
        ops = [Op(False, buf, peer, (direction, slot, "payload"))]
        if stamp is not None:
            ops.append(Op(False, stamp, peer, (direction, slot, "stamp")))
        return ops, _Recv(buf, stamp, peer, boundary, direction, slot, ids)

    def _issue(self, ops: list) -> list:
        """Post ops as one group; return the (work, op) pairs to wait for before using its data.
        With one work per op (gloo) sends complete in the background (wait_sends)."""
        works = self.transport(ops)
        if len(works) == len(ops):
            self.pending += [(w, o) for w, o in zip(works, ops) if o.send]
            return [(w, o) for w, o in zip(works, ops) if not o.send]
        # one coalesced work (NCCL): orders the compute stream; a timeout names the receive if any
        return [(w, next((o for o in ops if not o.send), ops[0])) for w in works]

    def post_recv(self, direction: str, slot: int, info: StepInfo, ids: torch.Tensor) -> None:
        """Post microbatch `slot`'s receive ahead of the operation that consumes it, so its bytes
        flow while this stage computes. Only where p2p operations progress independently (gloo,
        whose sends wait for the matching receive); on a stream-ordered backend (NCCL) a receive
        posted early would hold the later sends of its stream behind it, so there the receive
        stays in the consuming operation's group."""
        key = (direction, slot)
        if not self.early_recv or key in self.posted:
            return
        ops, recv, _ = self._recv_ops(direction, slot, info, ids)
        if ops:
            with self.timers.phase("p2p-wait"):
                self.posted[key] = (self._issue(ops), recv)

    def _wait(self, work, op: Op) -> None:
        try:
            work.wait()  # no timeout argument: the pipeline group's --distributed-timeout-minutes
        except RuntimeError as e:
            minutes = self.pstate.timeout.total_seconds() / 60
            what = "send to" if op.send else "receive from"
            raise PeerTimeout(f"pipeline stage {self.pstate.pp_rank} (rank {self.pstate.rank}): {what} rank "
                              f"{op.peer} did not complete within --distributed-timeout-minutes {minutes:g} "
                              f"(rank {op.peer} is stuck or dead; raise the flag if it is only slow): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e

    def wait_sends(self) -> None:
        """Complete every outstanding send (before the step ends, so buffers can be reused)."""
        with self.timers.phase("p2p-wait"):
            for work, op in self.pending:
                self._wait(work, op)
        self.pending.clear()

    # --- the six operations a schedule uses ---------------------------------------------
    def _neighbour(self, direction: str, receiving: bool) -> Optional[tuple]:
        """(peer rank, boundary) of a message in `direction` that this stage sends or receives;
        None at the pipeline's end. Forward receives and backward sends face the previous stage."""
        ps = self.pstate
        if (direction == "fwd") == receiving:
            return None if ps.is_first_stage else (ps.prev_rank, ps.pp_rank - 1)
        return None if ps.is_last_stage else (ps.next_rank, ps.pp_rank)

    def _send_ops(self, x, direction: str, slot, info, ids) -> list:
        n = self._neighbour(direction, receiving=False)
        return [] if n is None else self._encode(x, *n, direction, slot, info, ids)

    def _recv_ops(self, direction: str, slot, info, ids):
        """(ops to post, the receive, waits of an early post) for microbatch slot's message."""
        n = self._neighbour(direction, receiving=True)
        if n is None:
            return [], None, []
        if (direction, slot) in self.posted:
            waits, recv = self.posted.pop((direction, slot))
            return [], recv, waits
        return (*self._post(*n, direction, slot, info, ids), [])

    def _run(self, sends: list, posted: tuple, info: StepInfo, leaf: bool):
        """Issue sends + receive as one group (or only the sends, the receive posted early);
        wait for the receive, decode it and tp-gather it."""
        ops, recv, waits = posted
        if not sends and not ops and recv is None:
            return None
        with self.timers.phase("p2p-wait"):
            since = time.monotonic()
            if sends or ops:
                waits = waits + self._issue(sends + ops)
            for work, op in waits:
                self._wait(work, op)
            if self.link is not None:  # the simulated arrival (and, sender=on, the sends' departure)
                got = (None, None, None) if recv is None else (recv.peer, recv.buf, recv.stamp)
                self.link.settle(*got, since=since)
            if recv is None:
                return None
        with self.timers.phase("decode"):
            ch = self.channel(recv.boundary, recv.direction, recv.slot)
            x = ch.recv(recv.buf, step=info.step, fresh=info.fresh, sample_ids=recv.ids)
        with self.timers.phase("p2p-wait"):
            x = self._gather(x)
        # a new tensor object: the Channel may return its reference m itself, which must not
        # become an autograd leaf that accumulates .grad across steps
        return x.detach().float().requires_grad_(True) if leaf else x.float()

    def recv_forward(self, slot: int, info: StepInfo, ids: torch.Tensor) -> Optional[torch.Tensor]:
        """Activation from the previous stage, as a leaf that will collect its gradient."""
        return self._run([], self._recv_ops("fwd", slot, info, ids), info, leaf=True)

    def send_forward(self, y: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor) -> None:
        self._run(self._send_ops(y, "fwd", slot, info, ids), ([], None, []), info, leaf=False)

    def recv_backward(self, slot: int, info: StepInfo, ids: torch.Tensor) -> Optional[torch.Tensor]:
        """Gradient of this stage's output, from the next stage."""
        return self._run([], self._recv_ops("bwd", slot, info, ids), info, leaf=False)

    def send_backward(self, g: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor) -> None:
        self._run(self._send_ops(g, "bwd", slot, info, ids), ([], None, []), info, leaf=False)

    def send_forward_recv_backward(self, y: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor,
                                   recv_slot: int, recv_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """Send microbatch `slot`'s activation and receive microbatch `recv_slot`'s gradient,
        both with the next stage, as one group."""
        return self._run(self._send_ops(y, "fwd", slot, info, ids), self._recv_ops("bwd", recv_slot, info, recv_ids),
                         info, leaf=False)

    def send_backward_recv_forward(self, g: torch.Tensor, slot: int, info: StepInfo, ids: torch.Tensor,
                                   recv_slot: int, recv_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """Send microbatch `slot`'s input gradient and receive microbatch `recv_slot`'s activation,
        both with the previous stage, as one group."""
        return self._run(self._send_ops(g, "bwd", slot, info, ids), self._recv_ops("fwd", recv_slot, info, recv_ids),
                         info, leaf=True)

    # --- the step's commit (after the optimizer's skip decision, identical on all ranks) ---
    def finite_check(self) -> Optional[torch.Tensor]:
        """Every Channel's finite check of this step, combined (0-dim fp32 device tensor: 0 if
        every value sent, received or kept was finite, else NaN; None without checks). No host
        read: the trainer folds it into the step's one skip flag."""
        flags = [f for f in (ch.take_finite_check() for ch in self.channels.values()) if f is not None]
        return torch.stack(flags).sum() if flags else None

    def commit(self) -> None:
        """Keep this step's reference/residual/store changes (the optimizer stepped)."""
        for obj in (*self.channels.values(), *self.stores.values()):
            obj.commit()

    def rollback(self) -> None:
        """Undo this step's reference/residual/store changes (the optimizer skipped the step)."""
        if not self.undo:
            raise RuntimeError("P2P.rollback() needs P2P(..., undo=True): this step's changes were not kept")
        for obj in (*self.channels.values(), *self.stores.values()):
            obj.rollback()

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
