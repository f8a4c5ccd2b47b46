"""The schedule as data (megaclap.parallel.ops) and the time model's replay of it
(megaclap.parallel.timemodel) against hand-computed makespans."""
import pytest

from megaclap.parallel.ops import SCHEDULES, messages, peer_stage, stage_ops
from megaclap.config.links import Conventions, Link
from megaclap.parallel.timemodel import OpTime, StageTimes, replay, step_time, uniform_stages
from tests.test_transport import record

S_HALF = Link(16000.0, 0.0)  # 1000 bytes take 0.5 s


def _directed(schedule, m, pp, f, b, nbytes: dict):
    """uniform_stages with payload bytes per direction (fwd / bwd)."""
    stages = uniform_stages(schedule, m, pp, f, b)
    for r, st in enumerate(stages):
        for a, cost in zip(stage_ops(schedule, m, pp, r), st.ops):
            if a.send() is not None:
                cost.nbytes = nbytes[a.send()[0]]
    return stages


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_message_is_received_in_the_order_it_is_sent(schedule):
    """Catches an op list whose sends and receives disagree (a hang on real ranks)."""
    for pp in range(1, 7):
        for m in range(1, 9):
            sent, got = {}, {}
            for r in range(pp):
                for a in stage_ops(schedule, m, pp, r):
                    out, inc = messages(a, r)
                    if out is not None:
                        sent.setdefault((out[0], r, out[2]), []).append(out[1])
                    if inc is not None:
                        got.setdefault((inc[0], inc[2], r), []).append(inc[1])
            assert sent == got, (schedule, pp, m)
            assert step_time(schedule, m, uniform_stages(schedule, m, pp, 1.0, 2.0), None) > 0


def test_one_f_one_b_holds_pp_minus_r_and_gpipe_holds_m():
    for pp, m in ((4, 8), (4, 2), (3, 3)):
        for r in range(pp):
            for schedule, bound in (("1f1b", min(m, pp - r)), ("gpipe", m)):
                held = peak = 0
                for a in stage_ops(schedule, m, pp, r):
                    held += {"forward": 1, "backward": -1}.get(a.kind, 0)
                    peak = max(peak, held)
                assert peak == bound, (schedule, pp, m, r)
    ops = stage_ops("1f1b", 4, 4, 1)  # warmup of stage 1: two forwards sent before any backward
    assert [a.kind for a in ops[:6]] == ["recv_forward", "forward", "send_forward"] * 2


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "forward-only"])
def test_the_p2p_layer_issues_exactly_the_listed_groups(schedule):
    """The real schedule + P2P (recording transport) issue one group per listed p2p operation,
    with its messages: catches a schedule or P2P that splits, merges or reorders groups."""
    for pp, m in ((2, 3), (4, 5)):
        groups = record(pp, m, schedule)
        for r in range(pp):
            expect = []
            for a in stage_ops(schedule, m, pp, r):
                out, inc = messages(a, r)
                group = [(True, out[2], (out[0], out[1], "payload"))] if out else []
                group += [(False, inc[2], (inc[0], inc[1], "payload"))] if inc else []
                if group:
                    expect.append(group)
            issued = [[op[:3] for op in group] for group in groups[r]]  # (send, peer, tag)
            assert issued == expect, (schedule, pp, m, r)


def test_p2_m2_with_codec_times_1f1b_and_gpipe():
    """F = 1, B = 2, encode 0.1, decode 0.2, 0.5 s per message, no latency: worked by hand
    (docs: 1F1B stage 0 waits for the backward of microbatch 0 until 5.4, ends at 10.9; GPipe's
    stage 0 receives that gradient at 6.6 and ends at 11.0)."""
    def stages(schedule):
        return uniform_stages(schedule, 2, 2, 1.0, 2.0, encode=0.1, decode=0.2, nbytes=1000)
    assert replay("1f1b", 2, stages("1f1b"), S_HALF) == pytest.approx([10.9, 8.2])
    assert replay("gpipe", 2, stages("gpipe"), S_HALF) == pytest.approx([11.0, 8.2])


def test_wire_bound_and_compute_bound():
    """Compute-free, S = 1 s per message. 1F1B at pp=2 streams M activations after a fill of one
    message: (M + 1) S. GPipe: M forwards stream through pp - 1 hops, then M gradients back:
    2 (M + pp - 2) S. Infinitely fast link: the classic (M + pp - 1)(F + B)."""
    wire = Link(8000.0, 0.0)  # 1000 bytes per second
    for m in (4, 8):
        t = step_time("1f1b", m, uniform_stages("1f1b", m, 2, 0.0, 0.0, nbytes=1000), wire)
        assert t == pytest.approx(m + 1)
    for pp, m in ((2, 4), (4, 8)):
        t = step_time("gpipe", m, uniform_stages("gpipe", m, pp, 0.0, 0.0, nbytes=1000), wire)
        assert t == pytest.approx(2 * (m + pp - 2))
        t = step_time("1f1b", m, uniform_stages("1f1b", m, pp, 1.0, 2.0, nbytes=1000), None)
        assert t == pytest.approx((m + pp - 1) * 3.0)


def test_latency_only():
    """P=2, M=1, F=1, B=2, latency 0.25 s: F + L + F + B + L + B."""
    link = Link(float("inf"), 0.25)
    assert step_time("1f1b", 1, uniform_stages("1f1b", 1, 2, 1.0, 2.0, nbytes=10**9), link) == pytest.approx(6.5)


def test_asymmetric_directions():
    """Compute-free, P=2, M=2: forward messages take 1 s, backward 0.25 s (by hand: the last
    gradient arrives at 2.25); symmetric 1 s takes 3."""
    link = Link(8000.0, 0.0)
    small = _directed("1f1b", 2, 2, 0.0, 0.0, {"fwd": 1000, "bwd": 250})
    same = _directed("1f1b", 2, 2, 0.0, 0.0, {"fwd": 1000, "bwd": 1000})
    assert step_time("1f1b", 2, small, link) == pytest.approx(2.25)
    assert step_time("1f1b", 2, same, link) == pytest.approx(3.0)


def test_sender_billing_waits_for_departure():
    """P=2, M=2, F=1, B=0, 1 s per message: the sender's group waits for its send (6 s by hand);
    receiver-only billing lets stage 0 compute meanwhile (5 s)."""
    stages = uniform_stages("1f1b", 2, 2, 1.0, 0.0, nbytes=1000)
    off, on = Conventions(sender="off"), Conventions(sender="on")
    assert step_time("1f1b", 2, stages, Link(8000.0, 0.0, off)) == pytest.approx(5.0)
    assert step_time("1f1b", 2, stages, Link(8000.0, 0.0, on)) == pytest.approx(6.0)


def test_start_and_end_frame_the_schedule():
    """One stage: optimizer/overhead before the first operation, gradient reduction after."""
    st = StageTimes([OpTime(seconds=s) for s in (1.0, 2.0, 1.0, 2.0)], start=0.3, end=0.4)
    assert step_time("1f1b", 2, [st], None) == pytest.approx(6.7)


def test_measured_operations_must_match_the_schedule():
    stages = uniform_stages("1f1b", 2, 2, 1.0, 1.0)
    stages[1].ops.pop()
    with pytest.raises(ValueError, match="stage 1: 6 measured operations for 7"):
        step_time("1f1b", 2, stages, None)


def test_peer_stage():
    assert peer_stage("fwd", True, 1) == 2 and peer_stage("fwd", False, 1) == 0
    assert peer_stage("bwd", True, 1) == 0 and peer_stage("bwd", False, 1) == 2
