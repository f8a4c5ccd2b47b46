"""Simulated slow links (megaclap.parallel.simlink): flag parsing, the FIFO wire model, and runs."""
import pytest
import torch

from megaclap.config import ConfigError
from megaclap.parallel.simlink import SimLink, parse_bandwidth, parse_latency
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args


def test_parse_units():
    assert parse_bandwidth("200mbit") == 2e8 and parse_bandwidth("1gbit") == 1e9
    assert parse_bandwidth("500kbit") == 5e5 and parse_bandwidth("1e6") == 1e6 and parse_bandwidth("10mbps") == 8e7
    assert parse_latency("50ms") == pytest.approx(0.05) and parse_latency("0.05s") == 0.05
    assert parse_latency("0.2") == 0.2 and parse_latency("100us") == pytest.approx(1e-4)
    for bad in ("fast", "-5mbit", "0", "10 furlongs"):
        with pytest.raises(ConfigError, match="--sim-link-bandwidth"):
            parse_bandwidth(bad)
    with pytest.raises(ConfigError, match="--sim-link-latency"):
        parse_latency("soon")


def test_bad_flag_is_a_config_error():
    from megaclap.arguments import parse_args
    with pytest.raises(ConfigError, match="--sim-link-bandwidth"):
        parse_args(tiny_args(extra=["--sim-link-bandwidth", "quick"]))


def test_fifo_wire_model():
    """arrival = max(wire free, sent at) + bytes*8/bw + latency; latency does not occupy the wire;
    each (peer, direction) is its own wire."""
    link = SimLink(8000.0, 0.5)  # 1000 bytes take 1 s
    assert link.arrival((1, "fwd"), 1000, 0.0) == pytest.approx(1.5)
    assert link.arrival((1, "fwd"), 1000, 0.2) == pytest.approx(2.5)   # queued behind the first
    assert link.arrival((1, "bwd"), 500, 0.2) == pytest.approx(1.2)    # the other direction is free
    assert link.arrival((1, "fwd"), 1000, 5.0) == pytest.approx(6.5)   # the wire was idle again
    assert link.stats.busy_s[(1, "fwd")] == pytest.approx(3.0)
    assert link.stats.bytes == 3500 and link.stats.messages == 4
