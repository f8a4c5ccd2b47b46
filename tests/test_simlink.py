"""Simulated slow links (megaclap.parallel.simlink): flag parsing, the FIFO wire model, and runs."""
import pytest
import torch

from megaclap.config import ConfigError
from megaclap.config.links import Conventions, Link, parse_conventions, parse_links
from megaclap.config.units import parse_bandwidth, parse_latency
from megaclap.parallel.simlink import SimLink, Wires
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
    from megaclap.config import parse_args
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


def _timed_worker(rank, world, argv, steps):
    import time
    tr = make_trainer(rank, world, argv)
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(tr.train_step(tr.data.train.next_batch())["loss"])
        times.append(time.perf_counter() - start)
    return {"losses": losses, "times": times, "phases": dict(tr.timers.seconds), "last": tr.ps.is_last_stage,
            "wire": tr.link.stats.busy_s if tr.link is not None else None}


def test_wire_bound_run_follows_the_model_and_keeps_the_losses():
    """PP=2, M=4 microbatches of 4096 bytes, a link that takes S = 0.5 s per message and no latency:
    with compute negligible, 1F1B streams M activations back to back after a fill of pp-1
    messages, so a step takes (M + pp - 1) * S = 2.5 s (printed next to the measured step; the
    test asserts only the load-proof lower bound and the simulated wire's own account). The
    losses equal the unthrottled run's."""
    s_msg, m, pp = 0.5, 4, 2
    bw = 2 * 16 * 32 * 4 * 8 / s_msg  # bits/s: one (2, 16, 32) fp32 activation per S
    base = tiny_args(extra=["--pipeline-model-parallel-size", "2", "--timing-log-level", "1"])
    fast = run_ranks(_timed_worker, 2, base, 2)
    slow = run_ranks(_timed_worker, 2, base + ["--sim-link-bandwidth", str(bw)], 2)
    last_fast, last_slow = [r for r in fast if r["last"]][0], [r for r in slow if r["last"]][0]
    assert last_slow["losses"] == last_fast["losses"]  # bit for bit
    model = (m + pp - 1) * s_msg
    step = last_slow["times"][1]
    print(f"step {step:.3f} s, model {model:.3f} s, phases {last_slow['phases']}")
    # the wire model itself, on the simulated clock: every rank received 2 steps x M messages of S
    for r in slow:
        assert sum(r["wire"].values()) == pytest.approx(2 * m * s_msg), r["wire"]
    # the receiver really waits for the wire: a step cannot beat the model (load only slows it,
    # so this wall-clock bound cannot flake on a busy machine)
    assert step >= 0.95 * model, (step, model)
    for r in slow:  # the timers see where the time went: waiting for the link
        assert max(r["phases"], key=r["phases"].get) == "p2p-wait", r["phases"]
        assert sum(r["phases"].values()) <= sum(r["times"]) * 1.01
    assert fast[0]["phases"]["forward-compute"] > 0 and fast[0]["phases"]["backward-compute"] > 0


def test_timers_off_by_default_read_no_clock(monkeypatch):
    from megaclap.training import timers as T
    monkeypatch.setattr(T.time, "perf_counter", lambda: (_ for _ in ()).throw(AssertionError("clock read")))
    t = T.Timers(0)
    with t.phase("forward-compute"):
        pass
    t.start("optimizer")
    t.stop("optimizer")
    assert all(v == 0.0 for v in t.seconds.values())


# --- the link model's conventions (megaclap.parallel.simlink), each against a hand computation ---
def test_shared_inbound_wire_serialises_both_neighbours():
    """A middle stage gets 1000 bytes (1 s) from its previous stage at t=0 and from its next stage
    at t=0.2: one wire per pair delivers them at 1.0 and 1.2; one inbound wire at 1.0 and 2.0."""
    for wire, second in (("pair", 1.2), ("inbound", 2.0)):
        c = Conventions(wire=wire)
        wires = Wires(Link(8000.0, 0.0, c))
        assert wires.transfer(c.receive_key(0, 1), 1000, 0.0)[1] == pytest.approx(1.0)
        assert wires.transfer(c.receive_key(2, 1), 1000, 0.2)[1] == pytest.approx(second)


def test_latency_pipelined_or_per_message():
    """Two 1 s messages sent at 0 over a 0.5 s link: pipelined propagation lands them at 1.5 and
    2.5; latency added to every message (the wire busy until arrival) at 1.5 and 3.0."""
    for mode, second in (("pipelined", 2.5), ("per-message", 3.0)):
        wires = Wires(Link(8000.0, 0.5, Conventions(latency=mode)))
        assert wires.transfer("w", 1000, 0.0)[1] == pytest.approx(1.5)
        assert wires.transfer("w", 1000, 0.0)[1] == pytest.approx(second)


def test_sender_billing_waits_for_its_own_departures():
    """sender=on: a 1 s message makes the sending group wait until it has left; a second one
    queues behind it (departure + 1 s). sender=off: the sender never waits."""
    on = SimLink(8000.0, 0.5, conventions=Conventions(sender="on"), rank=0)
    t0 = float(on.stamp(peer=1, nbytes=1000))
    assert on.due == pytest.approx(t0 + 1.0, abs=1e-3)
    on.stamp(peer=1, nbytes=1000)
    assert on.due == pytest.approx(t0 + 2.0, abs=1e-3)
    off = SimLink(8000.0, 0.5, rank=0)
    off.stamp(peer=1, nbytes=1000)
    assert off.due == float("-inf")


def test_two_tp_ranks_share_their_node_link():
    """tp=2: each tp rank sends half of a 1000-byte boundary. Sharing the node's 8000 bit/s link,
    each half takes 1 s, as the whole boundary over one link; private wires (share=rank) would
    deliver it in 0.5 s. Both tp ranks of a stage are one node."""
    shared = SimLink(8000.0, 0.0, conventions=Conventions(share="tp"), rank=1, tp=2, dp=1)
    private = SimLink(8000.0, 0.0, conventions=Conventions(share="rank"), rank=1, tp=2, dp=1)
    assert shared.arrival("w", 500, 0.0) == pytest.approx(1.0)
    assert private.arrival("w", 500, 0.0) == pytest.approx(0.5)
    c = Conventions(share="tp")
    assert c.node(0, 2, 1) == c.node(1, 2, 1) != c.node(2, 2, 1)
    assert Conventions(share="stage").node(3, 2, 2) == 0 and Conventions(share="rank").node(3, 2, 2) == 3


def test_protocol_nanogpt_preset_is_their_meter():
    """Protocol NanoGPT's SimPipelineStage: one arrives_at per receiving rank, shared by both
    neighbours; starts_at = max(arrives_at, sent_at); arrives_at = starts_at + bits/BW + LATENCY."""
    c = parse_conventions("protocol-nanogpt")
    bw, lat = 2e8, 0.05
    wires = Wires(Link(bw, lat, c))
    arrives_at = 0.0
    for src, sent_at, nbytes in ((0, 0.0, 2_000_000), (2, 0.01, 500_000), (0, 0.5, 1_000_000), (2, 0.2, 10)):
        arrives_at = max(arrives_at, sent_at) + 8 * nbytes / bw + lat
        assert wires.transfer(c.receive_key(src, 1), nbytes, sent_at)[1] == pytest.approx(arrives_at)
    assert (c.wire, c.latency, c.sender, c.share) == ("inbound", "per-message", "off", "rank")


def test_link_flags_name_themselves():
    assert parse_conventions("megaclap,sender=on,share=rank") == Conventions(sender="on", share="rank")
    assert parse_conventions("nccl").sender == "on"
    with pytest.raises(ConfigError, match="--link-model 'fast'"):
        parse_conventions("fast")
    with pytest.raises(ConfigError, match="'wire=mesh' is not an option"):
        parse_conventions("megaclap,wire=mesh")
    links = parse_links("200mbit:50ms,1gbit@protocol-nanogpt", Conventions())
    assert [(ln.bandwidth, ln.latency, ln.conventions.wire) for ln in links] == [(2e8, 0.05, "pair"),
                                                                               (1e9, 0.0, "inbound")]
    with pytest.raises(ConfigError, match="--sim-links"):
        parse_links("fast:1ms", Conventions())
    from megaclap.config import parse_args
    with pytest.raises(ConfigError, match="--link-model"):
        parse_args(tiny_args(extra=["--link-model", "megaclap,latency=never"]))


def _busy_worker(rank, world, argv):
    tr = make_trainer(rank, world, argv)
    tr.train_step(tr.data.train.next_batch())
    return sum(tr.link.stats.busy_s.values())


def test_tp_ranks_share_the_node_link_in_a_real_run():
    """tp2 x pp2: each tp rank's wire time doubles when the two share their node's link."""
    base = tiny_args(layers=2, extra=["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                      "--sim-link-bandwidth", "1gbit"])
    private = run_ranks(_busy_worker, 4, base + ["--link-model", "megaclap,share=rank"])
    shared = run_ranks(_busy_worker, 4, base)
    for a, b in zip(private, shared):
        assert b == pytest.approx(2 * a) and a > 0
