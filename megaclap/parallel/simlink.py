"""Simulated slow links between pipeline stages, in the p2p layer (DESIGN.md section 7).

With --sim-link-bandwidth / --sim-link-latency every inter-stage message behaves as if it
crossed a link of that speed. The model is the receiver-side FIFO wire of public WAN pipeline
benchmarks (Protocol NanoGPT):

    sender     stamps each message with its clock at send time (sent_at), sent alongside it
    receiver   one FIFO wire per (peer, direction):
                   start    = max(wire_free, sent_at)
                   wire_free = start + bytes * 8 / bandwidth          (serialisation)
                   arrival  = wire_free + latency                      (propagation, pipelined)
               and waits (host sleep) until `arrival` before using the message

Bytes billed are the payload's actual bytes (compressed when compressed). The real transfer
still happens at the backend's speed, so compute and communication overlap exactly as far as
the schedule lets them. Works on any backend and needs no root.

Assumption: all ranks read one clock (time.monotonic, system-wide on Linux), i.e. the ranks
run on one machine. For real multi-host links use tools/netsim.py (namespaces + tc). On CUDA
the sender synchronises its stream before stamping (only when the link is on), so sent_at is
when the payload is ready, not when its kernels were queued.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from megaclap.config.units import parse_bandwidth, parse_latency
from megaclap.parallel.collectives import max_over_pp


@dataclass
class LinkStats:
    """Receiver-side counters since the last reset."""

    busy_s: dict = field(default_factory=dict)  # wire key -> seconds of serialisation
    messages: int = 0
    bytes: int = 0
    wire_s: float = 0.0   # sum over messages of bytes*8/bandwidth + latency
    wait_s: float = 0.0   # host time spent sleeping for arrivals


class SimLink:
    """The receiver-side wire model of one rank (shared by its training and evaluation P2P)."""

    def __init__(self, bandwidth_bps: float, latency_s: float = 0.0, device=None):
        self.bandwidth, self.latency = float(bandwidth_bps), float(latency_s)
        self.device = torch.device(device or "cpu")
        self.wire_free: dict = {}  # (peer, direction) -> clock when that wire is next idle
        self.stats = LinkStats()

    @classmethod
    def from_config(cls, parallel_cfg, device) -> Optional["SimLink"]:
        """None unless --sim-link-bandwidth or --sim-link-latency is set."""
        bw, lat = parallel_cfg.sim_link_bandwidth, parallel_cfg.sim_link_latency
        if bw is None and lat is None:
            return None
        return cls(parse_bandwidth(bw) if bw is not None else float("inf"),
                   parse_latency(lat) if lat is not None else 0.0, device)

    # --- sender ---------------------------------------------------------------------------
    def stamp(self) -> torch.Tensor:
        """The sender's clock now, as a 1-element float64 tensor to send with the payload."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return torch.tensor([time.monotonic()], dtype=torch.float64, device=self.device)

    def empty_stamp(self) -> torch.Tensor:
        return torch.empty(1, dtype=torch.float64, device=self.device)

    # --- receiver -------------------------------------------------------------------------
    def arrival(self, key, nbytes: int, sent_at: float) -> float:
        """Advance wire `key` by one message of nbytes sent at sent_at; return its arrival."""
        serial = nbytes * 8 / self.bandwidth
        start = max(self.wire_free.get(key, float("-inf")), sent_at)
        self.wire_free[key] = start + serial
        s = self.stats
        s.messages += 1
        s.bytes += nbytes
        s.wire_s += serial + self.latency
        s.busy_s[key] = s.busy_s.get(key, 0.0) + serial
        return start + serial + self.latency

    def deliver(self, key, payload: torch.Tensor, stamp: torch.Tensor) -> None:
        """Wait until the payload (already received) would have arrived over the link."""
        arrival = self.arrival(key, payload.numel() * payload.element_size(), float(stamp.item()))
        delay = arrival - time.monotonic()
        if delay > 0:
            time.sleep(delay)
            self.stats.wait_s += delay


FIELDS = ("busiest wire busy (s)", "wire time (s)", "wait (s)")


def gather(link: Optional[SimLink], pstate) -> torch.Tensor:
    """Max over the pp group of (busiest wire's busy time, summed wire time, host wait) since the
    last call; a pp-group collective (every rank calls it). Resets the counters."""
    s = link.stats if link is not None else LinkStats()
    out = torch.tensor([max(s.busy_s.values(), default=0.0), s.wire_s, s.wait_s], dtype=torch.float64)
    if link is not None:
        link.stats = LinkStats()
    return max_over_pp(out, pstate)


def log_fields(arr: torch.Tensor, steps: int) -> str:
    """Per-step simulated wire time for the log line (max over the stages)."""
    busy, wire, wait = (float(v) * 1e3 / max(1, steps) for v in arr)
    return (f" sim wire busy per step (ms): {busy:.1f} | sim wire time per step (ms): {wire:.1f} |"
            f" sim link wait per step (ms): {wait:.1f} |")


def tb_scalars(arr: torch.Tensor, steps: int) -> dict:
    busy, wire, wait = (float(v) / max(1, steps) for v in arr)
    return {"sim-link/busiest-wire-busy-time": busy, "sim-link/wire-time": wire, "sim-link/wait-time": wait}
