"""Simulated slow links between pipeline stages: one link model (DESIGN.md section 7), used by the
simulated links in the p2p layer (SimLink) and by the time model (megaclap.parallel.timemodel).

A message of B bytes sent at `sent_at` goes onto a FIFO wire:

    start     = max(wire free, sent_at)
    departure = start + B * 8 / bandwidth            (serialisation)
    arrival   = departure + latency
    wire free = departure        latency=pipelined   (propagation does not occupy the wire)
              = arrival          latency=per-message (the next message waits for this one to land)

The receiver advances its wires in the order it consumes messages and waits until `arrival`.
Bytes billed are the payload's actual bytes (compressed when compressed), never the stamp.

Conventions (`--link-model PRESET[,key=value...]`):

    wire     pair      one wire per (sending node, receiving node): each stage boundary is a
                       full-duplex link, one wire per direction
             inbound   one inbound wire per receiving node, shared by both neighbours and both
                       directions
    latency  pipelined | per-message   (above)
    sender   off       only the receiver waits (sends complete in the background, as on gloo)
             on        a p2p group that sends also waits until its message has departed (NCCL: a
                       batched group completes with its sends); the sender keeps its own account
                       of the pair wire, or of its node's outbound wire with wire=inbound
    share    rank      every rank has a private wire of the full bandwidth
             tp        the tp ranks of a stage share their node's link: bandwidth / tp each
             stage     all tp x dp ranks of a stage share one node's link: bandwidth / (tp dp)

A node is what shares a link (a rank, a tp group or a whole stage); wires are keyed by node.
Sharing splits the bandwidth evenly, which equals one shared FIFO wire when the sharing ranks send
equal messages at the same time (the tp slices of a boundary do, by construction).
Presets: `megaclap` (default: pair, pipelined, sender off, share tp), `nccl` (megaclap with sender
on) and `protocol-nanogpt` (inbound, per-message, sender off, share rank: Protocol NanoGPT's
SimPipelineStage meter with one stage per GPU).

SimLink: each message carries the sender's clock (a float64 stamp sent in the same group); the
receiver keeps its wires and sleeps until the message would have arrived. The real transfer still
happens at the backend's speed, so compute and communication overlap exactly as far as the schedule
lets them. Works on any backend and needs no root. All ranks read one clock (time.monotonic,
system-wide on Linux), i.e. they run on one machine; for real links use tools/netsim.py. On CUDA
the sender synchronises its stream before stamping (only when the link is on), so the stamp is
when the payload is ready, not when its kernels were queued.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from megaclap.config.links import Conventions, Link, parse_conventions
from megaclap.config.units import parse_bandwidth, parse_latency
from megaclap.parallel.collectives import max_over_pp


# --- the link model (Conventions and Link, the parsed flags, live in megaclap/config/links.py) --
class Wires:
    """The FIFO wires of one endpoint: wire key -> time the wire is next free."""

    def __init__(self, link: Link):
        self.link = link
        self.free: dict = {}
        self.busy: dict = {}  # wire key -> seconds of serialisation so far

    def transfer(self, key, nbytes: int, sent_at: float) -> tuple[float, float]:
        """(departure, arrival) of one message on wire `key`; advances that wire."""
        serial = nbytes * 8 / self.link.bandwidth
        departure = max(self.free.get(key, float("-inf")), sent_at) + serial
        arrival = departure + self.link.latency
        self.free[key] = arrival if self.link.conventions.latency == "per-message" else departure
        self.busy[key] = self.busy.get(key, 0.0) + serial
        return departure, arrival


# --- simulated links in the p2p layer ----------------------------------------------------------
@dataclass
class LinkStats:
    """Receiver-side counters since the last reset."""

    busy_s: dict = field(default_factory=dict)  # wire key -> seconds of serialisation
    messages: int = 0
    bytes: int = 0
    wire_s: float = 0.0   # sum over messages of bytes*8/bandwidth + latency
    wait_s: float = 0.0   # host time spent sleeping for arrivals (and, sender=on, departures)
    late_s: float = 0.0   # how much later than the model groups completed (transfer, waking up)


class SimLink:
    """The wires of one rank (shared by its training and evaluation P2P).

    rank/tp/dp place this rank and its peers on nodes (Conventions.node); the bandwidth is the
    node's, split among the ranks that share it."""

    def __init__(self, bandwidth_bps: float, latency_s: float = 0.0, device=None,
                 conventions: Optional[Conventions] = None, rank: int = 0, tp: int = 1,
                 dp: int = 1):
        conv = conventions or Conventions()
        self.link = Link(float(bandwidth_bps), float(latency_s), conv).for_rank(tp, dp)
        self.bandwidth, self.latency = self.link.bandwidth, self.link.latency
        self.conventions = conv
        self.rank, self.tp, self.dp = rank, tp, dp
        self.device = torch.device(device or "cpu")
        self.wires, self.sent_wires = Wires(self.link), Wires(self.link)
        self.due = float("-inf")  # sender=on: when this group's sends have departed
        self.stats = LinkStats()

    @classmethod
    def from_config(cls, parallel_cfg, pstate) -> Optional["SimLink"]:
        """None unless --sim-link-bandwidth or --sim-link-latency is set."""
        bw, lat = parallel_cfg.sim_link_bandwidth, parallel_cfg.sim_link_latency
        if bw is None and lat is None:
            return None
        return cls(parse_bandwidth(bw) if bw is not None else float("inf"),
                   parse_latency(lat) if lat is not None else 0.0, pstate.device,
                   parse_conventions(parallel_cfg.link_model), pstate.rank, pstate.tp_size,
                   pstate.dp_size)

    def _node(self, rank: int) -> int:
        return self.conventions.node(rank, self.tp, self.dp)

    # --- sender ---------------------------------------------------------------------------
    def stamp(self, peer: Optional[int] = None, nbytes: int = 0) -> torch.Tensor:
        """The sender's clock now, as a 1-element float64 tensor sent with the payload. With
        sender=on, a message of nbytes to `peer` also makes this group wait for its departure."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        now = time.monotonic()
        if self.conventions.sender == "on" and peer is not None:
            key = self.conventions.send_key(self._node(self.rank), self._node(peer))
            self.due = max(self.due, self.sent_wires.transfer(key, nbytes, now)[0])
        return torch.tensor([now], dtype=torch.float64, device=self.device)

    def empty_stamp(self) -> torch.Tensor:
        return torch.empty(1, dtype=torch.float64, device=self.device)

    # --- receiver -------------------------------------------------------------------------
    def arrival(self, key, nbytes: int, sent_at: float) -> float:
        """Advance receiving wire `key` by one message of nbytes sent at sent_at; its arrival."""
        arrival = self.wires.transfer(key, nbytes, sent_at)[1]
        s = self.stats
        s.messages += 1
        s.bytes += nbytes
        s.wire_s += nbytes * 8 / self.bandwidth + self.latency
        s.busy_s[key] = self.wires.busy[key]
        return arrival

    def settle(self, peer: Optional[int] = None, payload: Optional[torch.Tensor] = None,
               stamp: Optional[torch.Tensor] = None, since: float = float("-inf")) -> None:
        """End of a p2p group that began waiting at `since`: wait until its received payload
        (already here) would have arrived from `peer`, and (sender=on) until its sends departed."""
        until, self.due = self.due, float("-inf")
        if payload is not None:
            key = self.conventions.receive_key(self._node(peer), self._node(self.rank))
            nbytes = payload.numel() * payload.element_size()
            until = max(until, self.arrival(key, nbytes, float(stamp.item())))
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            self.stats.wait_s += delay
        if until > float("-inf"):  # what the link model leaves out: the real transfer, waking up
            self.stats.late_s += max(0.0, time.monotonic() - max(until, since))


FIELDS = ("busiest wire busy (s)", "wire time (s)", "wait (s)", "late (s)")


def gather(link: Optional[SimLink], pstate) -> torch.Tensor:
    """Max over the pp group of (busiest wire's busy time, summed wire time, host wait, lateness)
    since the last call; a pp-group collective (every rank calls it). Resets the counters."""
    s = link.stats if link is not None else LinkStats()
    busiest = max(s.busy_s.values(), default=0.0)
    out = torch.tensor([busiest, s.wire_s, s.wait_s, s.late_s], dtype=torch.float64)
    if link is not None:
        link.stats = LinkStats()
        link.wires.busy.clear()
    return max_over_pp(out, pstate)


def log_fields(arr: torch.Tensor, steps: int) -> str:
    """Per-step simulated wire time for the log line (max over the stages)."""
    busy, wire, wait, late = (float(v) * 1e3 / max(1, steps) for v in arr)
    return (f" sim wire busy per step (ms): {busy:.1f} | sim wire time per step (ms): {wire:.1f} |"
            f" sim link wait per step (ms): {wait:.1f} | sim link late per step (ms): {late:.1f} |")


def tb_scalars(arr: torch.Tensor, steps: int) -> dict:
    busy, wire, wait, late = (float(v) / max(1, steps) for v in arr)
    return {"sim-link/busiest-wire-busy-time": busy, "sim-link/wire-time": wire,
            "sim-link/wait-time": wait, "sim-link/late-time": late}
