"""Link specifications on the command line: `--link-model` conventions and `--sim-links` lists.

Pure parsing into value objects; the link model that uses them (wires, arrivals, the time model)
lives in megaclap/parallel/simlink.py, whose docstring explains each convention:

    wire     pair | inbound          one wire per (sender, receiver) node pair, or per receiver
    latency  pipelined | per-message whether propagation occupies the wire
    sender   off | on                whether a sending p2p group waits for its message's departure
    share    rank | tp | stage       who splits one node's bandwidth

    --link-model  PRESET[,key=value...]              'megaclap,sender=on'
    --sim-links   BW[:LATENCY][@PRESET],...          '200mbit:50ms,1gbit:10ms@protocol-nanogpt'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError
from .units import parse_bandwidth, parse_latency

OPTIONS = {"wire": ("pair", "inbound"), "latency": ("pipelined", "per-message"),
           "sender": ("off", "on"), "share": ("rank", "tp", "stage")}
PRESETS = {
    "megaclap": {"wire": "pair", "latency": "pipelined", "sender": "off", "share": "tp"},
    "nccl": {"wire": "pair", "latency": "pipelined", "sender": "on", "share": "tp"},
    "protocol-nanogpt": {"wire": "inbound", "latency": "per-message", "sender": "off",
                         "share": "rank"},
}


@dataclass(frozen=True)
class Conventions:
    """How a link is modelled (module docstring; megaclap/parallel/simlink.py)."""

    wire: str = "pair"
    latency: str = "pipelined"
    sender: str = "off"
    share: str = "tp"

    def sharers(self, tp: int, dp: int) -> int:
        """Ranks that split one node's bandwidth."""
        return {"rank": 1, "tp": tp, "stage": tp * dp}[self.share]

    def node(self, rank: int, tp: int, dp: int) -> int:
        """The node (what shares a link) of a global rank of the tp-dp-pp grid."""
        return rank // {"rank": 1, "tp": tp, "stage": tp * dp}[self.share]

    def receive_key(self, src_node, dst_node) -> tuple:
        """The receiver's wire for a message src_node -> dst_node."""
        return ("in", dst_node) if self.wire == "inbound" else ("pair", src_node, dst_node)

    def send_key(self, src_node, dst_node) -> tuple:
        """The sender's account of its message (sender=on): the pair wire, or its outbound wire."""
        return ("out", src_node) if self.wire == "inbound" else ("pair", src_node, dst_node)

    def __str__(self) -> str:
        return f"wire={self.wire},latency={self.latency},sender={self.sender},share={self.share}"


def parse_conventions(spec: str, flag: str = "--link-model") -> Conventions:
    """'megaclap', 'protocol-nanogpt', 'megaclap,sender=on,share=rank', ..."""
    name, *overrides = [part.strip() for part in str(spec).split(",")]
    if name not in PRESETS:
        raise ConfigError(f"{flag} {spec!r}: the preset {name!r} is not one of {list(PRESETS)} "
                          "(optionally followed by overrides such as ,wire=inbound)")
    values = dict(PRESETS[name])
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in OPTIONS or value not in OPTIONS[key]:
            allowed = ", ".join(f"{k}={'|'.join(v)}" for k, v in OPTIONS.items())
            raise ConfigError(f"{flag} {spec!r}: {item!r} is not an option ({allowed})")
        values[key] = value
    return Conventions(**values)


@dataclass(frozen=True)
class Link:
    """One link to simulate or price: a node's rate, the one-way latency and the conventions."""

    bandwidth: float                       # bits/s
    latency: float = 0.0                   # seconds
    conventions: Conventions = Conventions()
    name: str = ""

    def for_rank(self, tp: int, dp: int) -> "Link":
        """The link as one rank sees it: its share of the node's bandwidth."""
        share = self.conventions.sharers(tp, dp)
        return dataclasses.replace(self, bandwidth=self.bandwidth / share)


def parse_links(text: str, conventions: Conventions, flag: str = "--sim-links") -> list:
    """'200mbit:50ms,1gbit:10ms@protocol-nanogpt' -> [Link, ...]; a suffix @PRESET gives that
    link a preset's conventions instead of --link-model's."""
    links = []
    for item in [s.strip() for s in str(text).split(",") if s.strip()]:
        body, _, preset = item.partition("@")
        rate, _, delay = body.partition(":")
        conv = parse_conventions(preset, flag) if preset else conventions
        bandwidth, latency = parse_bandwidth(rate, flag), parse_latency(delay or "0", flag)
        links.append(Link(bandwidth, latency, conv, item))
    if not links:
        raise ConfigError(f"{flag} {text!r}: expected links such as 200mbit:50ms,1gbit:10ms")
    return links
