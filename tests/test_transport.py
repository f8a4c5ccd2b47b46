"""Pipeline transport: the schedules' p2p groups never deadlock, every message is received as
it was sent, the communicators of a step agree on their order, and the tp-split boundary.

The deadlock check runs the real schedules and the real P2P of every stage in one process,
with a recording fake transport in place of batch_isend_irecv. It then replays the recorded
groups under a strict model of a stream-ordered backend (NCCL): each rank runs its groups in
order, and a group completes only when every op in it meets its matching op (the k-th send
a->b meets b's k-th receive from a) in the group the peer is currently at. A model that never
stalls under this rule cannot hang on NCCL or gloo. Each op also carries its byte count and
dtype, and the two ends of a message must agree on them (on NCCL a size mismatch is a hang or
corrupted data; gloo may not notice). A real tp x pp x dp job (forked gloo ranks) is recorded
the same way, with every collective of every communicator, whose members must issue the same
collectives in the same order.
"""
from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
import torch

from megaclap.config import CompressionConfig
from megaclap.parallel.p2p import P2P, StepInfo
from megaclap.parallel.schedules import Microbatch, ScheduleStats, _Comm, _gpipe, _one_f_one_b, forward_backward
from megaclap.parallel.simlink import SimLink
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

SHAPE = (1, 2, 2)  # (b, s, h) of the boundary tensor


class _Done:
    def wait(self):
        return True


def _op(o) -> tuple:
    """(send, peer, tag, bytes, dtype) of one transport Op."""
    return (o.send, o.peer, o.tag, o.tensor.numel() * o.tensor.element_size(), str(o.tensor.dtype))


def _tags(groups: list) -> list:
    """The (send, peer, tag) part of recorded groups, by rank (what the contract fixes)."""
    return [[[op[:3] for op in g] for g in seq] for seq in groups]


class _Recorder:
    """Fake transport: records each group as [(send, peer, tag, bytes, dtype)] and fills receive
    buffers with zeros."""

    def __init__(self):
        self.groups: list = []

    def __call__(self, ops):
        self.groups.append([_op(o) for o in ops])
        for o in ops:
            if not o.send:
                o.tensor.zero_()
        return [_Done() for _ in ops]


class _ToyStage(torch.nn.Module):
    """Stands in for GPTStage: token ids -> (b, s, h) on the first stage, per-token loss on the last."""

    def __init__(self, first: bool, last: bool):
        super().__init__()
        self.first, self.last = first, last
        self.w = torch.nn.Parameter(torch.ones(SHAPE[2]))

    def forward(self, x, labels=None):
        if getattr(self, "events", None) is not None:
            self.events.append(("compute", []))
        if self.first:
            x = x.float().unsqueeze(-1) * self.w
        y = x * self.w
        return y.sum(-1) if self.last else y


def _pstate(r: int, pp: int):
    return SimpleNamespace(pp_rank=r, pp_size=pp, rank=r, tp_size=1, tp_rank=0, dp_rank=0,
                           device=torch.device("cpu"), is_first_stage=r == 0, is_last_stage=r == pp - 1,
                           next_rank=None if r == pp - 1 else r + 1, prev_rank=None if r == 0 else r - 1,
                           pp=SimpleNamespace(group=None), timeout=datetime.timedelta(minutes=1))


def record(pp: int, m: int, schedule: str) -> list:
    """The p2p groups each stage's real schedule and real P2P issue for one step, by rank."""
    out = []
    for r in range(pp):
        ps = _pstate(r, pp)
        p2p = P2P(ps, SHAPE, torch.float32, CompressionConfig())
        p2p.transport = rec = _Recorder()
        mbs = [Microbatch(torch.zeros(SHAPE[0], SHAPE[1] + 1, dtype=torch.long), torch.tensor([i]))
               for i in range(m)]
        forward_backward(_ToyStage(r == 0, r == pp - 1), ps, p2p, mbs, StepInfo(0, True), schedule=schedule,
                         forward_only=schedule == "forward-only")
        out.append(rec.groups)
    return out


class _FakeP2P:
    """P2P's contract without Channels or tensors: each operation is one group of its messages
    (payload and, with a simulated link, a stamp), none where the neighbour is missing."""

    def __init__(self, r: int, pp: int, stamps: bool):
        self.r, self.pp, self.groups = r, pp, []
        self.parts = ("payload", "stamp") if stamps else ("payload",)

    def _ops(self, send: bool, direction: str, slot: int) -> list:
        to_next = (direction == "fwd") == send
        peer = self.r + 1 if to_next else self.r - 1
        if not 0 <= peer < self.pp:
            return []
        return [(send, peer, (direction, slot, part)) for part in self.parts]

    def _group(self, ops: list):
        if ops:
            self.groups.append(ops)
        return torch.zeros(1) if any(not s for s, _, _ in ops) else None

    def recv_forward(self, slot, info, ids):
        return self._group(self._ops(False, "fwd", slot))

    def send_forward(self, y, slot, info, ids):
        self._group(self._ops(True, "fwd", slot))

    def recv_backward(self, slot, info, ids):
        return self._group(self._ops(False, "bwd", slot))

    def send_backward(self, g, slot, info, ids):
        self._group(self._ops(True, "bwd", slot))

    def send_forward_recv_backward(self, y, slot, info, ids, recv_slot, recv_ids):
        return self._group(self._ops(True, "fwd", slot) + self._ops(False, "bwd", recv_slot))

    def send_backward_recv_forward(self, g, slot, info, ids, recv_slot, recv_ids):
        return self._group(self._ops(True, "bwd", slot) + self._ops(False, "fwd", recv_slot))

    def post_recv(self, direction, slot, info, ids):
        pass  # a stream-ordered backend posts no receive early

    def wait_sends(self):
        pass


class _FakeRunner:
    def __init__(self, r: int, pp: int, stats):
        self.first, self.last, self.stats = r == 0, r == pp - 1, stats

    def forward(self, i, x):
        assert self.first or x is not None, f"forward {i} without its input"
        self.stats.push()
        return None if self.last else torch.zeros(1)

    def backward(self, i, g):
        assert self.last or g is not None, f"backward {i} without its gradient"
        self.stats.pop()
        return None if self.first else torch.zeros(1)


def record_fake(pp: int, m: int, schedule: str, stamps: bool = False) -> list:
    """The same as record() with the fake P2P and a compute-free stage (fast enough for the grid)."""
    out = []
    for r in range(pp):
        p2p, stats = _FakeP2P(r, pp, stamps), ScheduleStats()
        run = _FakeRunner(r, pp, stats)
        comm = _Comm(p2p, StepInfo(0, True), [SimpleNamespace(ids=None)] * m, free=False)
        if schedule == "1f1b":
            _one_f_one_b(run, comm, m, pp, r, stats)
        else:
            _gpipe(run, comm, m, pp, r, stats)
        out.append(p2p.groups)
    return out


def replay(groups: list) -> None:
    """Raise AssertionError on a mismatched message or a stall (see the module docstring). An op
    is (send, peer, tag, *what): the two ends must agree on tag and what (bytes, dtype)."""
    n = len(groups)
    ends: dict = {}  # (src, dst, k) -> {"send"|"recv": (rank, group index, (tag, *what))}
    for r, seq in enumerate(groups):
        count: dict = {}
        for gi, group in enumerate(seq):
            for send, peer, *message in group:
                k = count[(send, peer)] = count.get((send, peer), -1) + 1
                key = (r, peer, k) if send else (peer, r, k)
                ends.setdefault(key, {})["send" if send else "recv"] = (r, gi, tuple(message))
    needs = [[[] for _ in seq] for seq in groups]  # (peer, peer's group index) each group waits for
    for key, e in ends.items():
        assert set(e) == {"send", "recv"}, f"message {key} has no matching {({'send', 'recv'} - set(e)).pop()}"
        (sr, sg, stag), (rr, rg, rtag) = e["send"], e["recv"]
        assert stag == rtag, f"message {key}: sent {stag}, received as {rtag}"
        needs[sr][sg].append((rr, rg))
        needs[rr][rg].append((sr, sg))
    pos = [0] * n
    while any(pos[r] < len(groups[r]) for r in range(n)):
        live = {r for r in range(n) if pos[r] < len(groups[r])}
        changed = True
        while changed:  # the largest set of current groups whose ops all meet each other
            changed = False
            for r in sorted(live):
                if any(peer not in live or pos[peer] != gi for peer, gi in needs[r][pos[r]]):
                    live.discard(r)
                    changed = True
        assert live, "stall: " + ", ".join(f"rank {r} waits at group {pos[r]} {groups[r][pos[r]]}"
                                            for r in range(n) if pos[r] < len(groups[r]))
        for r in live:
            pos[r] += 1


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_schedules_never_cross_sends(schedule):
    for pp in range(2, 9):
        for m in range(1, 17):
            groups = record_fake(pp, m, schedule)
            replay(groups)
            if schedule == "1f1b":  # the steady state pairs each send with the opposite receive
                paired = sum(1 for seq in groups for g in seq if {s for s, _, _ in g} == {True, False})
                steady = [m - min(pp - r - 1, m) for r in range(pp)]
                expect = sum(steady[r] * (r < pp - 1) + max(0, steady[r] - 1) * (r > 0) for r in range(pp))
                assert paired == expect, (pp, m, paired, expect)


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "forward-only"])
@pytest.mark.parametrize("pp,m", [(2, 1), (2, 3), (3, 2), (4, 4), (4, 6)])
def test_real_p2p_issues_the_groups_of_the_contract(schedule, pp, m):
    """The real schedule + P2P (Channels, toy stage) issue exactly the fake's groups, which replay."""
    real = record(pp, m, schedule)
    replay(real)
    if schedule != "forward-only":
        assert _tags(real) == record_fake(pp, m, schedule)


def test_stamps_of_a_simulated_link_travel_in_the_same_group():
    replay(record_fake(4, 6, "1f1b", stamps=True))
    for r in range(3):
        ps = _pstate(r, 3)
        p2p = P2P(ps, SHAPE, torch.float32, CompressionConfig(), link=SimLink(1e12, 0.0))
        p2p.transport = rec = _Recorder()
        mbs = [Microbatch(torch.zeros(1, 3, dtype=torch.long), torch.tensor([i])) for i in range(4)]
        forward_backward(_ToyStage(r == 0, r == 2), ps, p2p, mbs, StepInfo(0, True))
        assert _tags([rec.groups])[0] == record_fake(3, 4, "1f1b", stamps=True)[r]


class _EventRecorder:
    """Fake transport keeping the host's view: ('post', ops) per group and ('wait', op) per wait."""

    def __init__(self):
        self.events: list = []

    def __call__(self, ops):
        recs = [(o.send, o.peer, o.tag, len(self.events), i) for i, o in enumerate(ops)]
        self.events.append(("post", recs))
        for o in ops:
            if not o.send:
                o.tensor.zero_()
        return [SimpleNamespace(wait=lambda rec=rec: self.events.append(("wait", rec))) for rec in recs]


def replay_independent(events: list) -> None:
    """gloo's semantics: posting never blocks; a wait returns once the matching op of the peer
    has been posted (a send waits for its receive). AssertionError on a mismatch or a stall."""
    partner, count = {}, {}
    for r, evs in enumerate(events):
        for kind, payload in evs:
            for rec in payload if kind == "post" else ():
                send, peer, tag = rec[:3]
                k = count[(r, send, peer)] = count.get((r, send, peer), -1) + 1
                key = (r, peer, k) if send else (peer, r, k)
                partner.setdefault(key, {})["send" if send else "recv"] = (r, rec)
    other = {}
    for key, ends in partner.items():
        assert set(ends) == {"send", "recv"}, f"message {key} is never matched"
        assert ends["send"][1][2] == ends["recv"][1][2], f"message {key}: {ends}"
        other[ends["send"]] = ends["recv"]
        other[ends["recv"]] = ends["send"]
    posted, pos = set(), [0] * len(events)
    while any(pos[r] < len(events[r]) for r in range(len(events))):
        progress = False
        for r, evs in enumerate(events):
            while pos[r] < len(evs):
                kind, payload = evs[pos[r]]
                if kind == "wait" and other[(r, payload)] not in posted:
                    break
                posted.update((r, rec) for rec in (payload if kind == "post" else ()))
                pos[r] += 1
                progress = True
        assert progress, "stall: " + ", ".join(f"rank {r} at {events[r][pos[r]]}" for r in range(len(events))
                                                if pos[r] < len(events[r]))


def record_early(pp: int, m: int, schedule: str) -> list:
    """Host-side events of the real schedule + P2P with receives posted early (the gloo path)
    and a simulated link's stamps."""
    out = []
    for r in range(pp):
        ps = _pstate(r, pp)
        p2p = P2P(ps, SHAPE, torch.float32, CompressionConfig(), link=SimLink(1e12, 0.0))
        p2p.transport, p2p.early_recv = _EventRecorder(), True
        mbs = [Microbatch(torch.zeros(SHAPE[0], SHAPE[1] + 1, dtype=torch.long), torch.tensor([i]))
               for i in range(m)]
        stage = _ToyStage(r == 0, r == pp - 1)
        stage.events = p2p.transport.events  # forward compute shows up between the p2p events
        forward_backward(stage, ps, p2p, mbs, StepInfo(0, True), schedule=schedule)
        out.append(p2p.transport.events)
    return out


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_early_receives_never_stall_under_gloo_semantics(schedule):
    for pp in (2, 3, 4, 6):
        for m in (1, 3, 4, 8):
            events = record_early(pp, m, schedule)
            replay_independent(events)
            if m > 1:  # a receive really was posted ahead: a receive-only group, then compute
                early = [i for evs in events for i, (k, p) in enumerate(evs[:-1])
                         if k == "post" and not any(x[0] for x in p) and evs[i + 1][0] == "compute"]
                assert early, (pp, m)


def test_gloo_replay_catches_a_stall():
    a = [("post", [(False, 1, ("fwd", 0, "payload"), 0, 0)]), ("wait", (False, 1, ("fwd", 0, "payload"), 0, 0)),
         ("post", [(True, 1, ("bwd", 0, "payload"), 2, 0)])]
    b = [("post", [(False, 0, ("bwd", 0, "payload"), 0, 0)]), ("wait", (False, 0, ("bwd", 0, "payload"), 0, 0)),
         ("post", [(True, 0, ("fwd", 0, "payload"), 2, 0)])]
    with pytest.raises(AssertionError, match="stall"):
        replay_independent([a, b])


def _old_1f1b(pp: int, m: int) -> list:
    """What the transport did before the paired operations: every send and every receive its
    own group, forward sends crossing backward sends in the steady state."""
    out = []
    for r in range(pp):
        seq = []
        fwd = lambda i: ([[(False, r - 1, ("fwd", i, "payload"))]] if r else []) + \
            ([[(True, r + 1, ("fwd", i, "payload"))]] if r < pp - 1 else [])
        bwd = lambda i: ([[(False, r + 1, ("bwd", i, "payload"))]] if r < pp - 1 else []) + \
            ([[(True, r - 1, ("bwd", i, "payload"))]] if r else [])
        warmup = min(pp - r - 1, m)
        for i in range(warmup):
            seq += fwd(i)
        for j in range(m - warmup):
            seq += fwd(warmup + j) + bwd(j)
        for j in range(m - warmup, m):
            seq += bwd(j)
        out.append(seq)
    return out


def test_replay_catches_the_old_crossing_sends():
    with pytest.raises(AssertionError, match="stall"):
        replay(_old_1f1b(2, 4))


def test_replay_catches_a_mismatched_message():
    groups = record(2, 2, "1f1b")
    groups[1] = [[(s, p, (d, 1 - i, part), *rest) if not s and d == "fwd" else (s, p, (d, i, part), *rest)
                  for s, p, (d, i, part), *rest in g] for g in groups[1]]
    with pytest.raises(AssertionError, match="received as"):
        replay(groups)
# --- bytes and dtypes of every message, over fresh and repeated steps -----------------------------
ALL_METHODS = ["none", "direct", "ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu"]
FRESH = [True, False, False, True, False]  # lazy sampling: fresh and repeated steps mixed


def record_steps(pp: int, m: int, schedule: str, compression_of, fresh=FRESH) -> list:
    """The groups (with bytes and dtypes) each stage's real schedule and P2P issue over several
    steps; a repeated step reuses the previous step's samples, as lazy sampling does.
    compression_of(rank) -> that rank's CompressionConfig (both ends normally agree)."""
    out = []
    for r in range(pp):
        ps = _pstate(r, pp)
        p2p = P2P(ps, SHAPE, torch.float32, compression_of(r))
        p2p.transport = rec = _Recorder()
        stage, ids = _ToyStage(r == 0, r == pp - 1), None
        for step, is_fresh in enumerate(fresh):
            if is_fresh:
                ids = [torch.tensor([step * m + i]) for i in range(m)]
            mbs = [Microbatch(torch.zeros(SHAPE[0], SHAPE[1] + 1, dtype=torch.long), ids[i]) for i in range(m)]
            forward_backward(stage, ps, p2p, mbs, StepInfo(step, is_fresh), schedule=schedule)
            p2p.commit()
        out.append(rec.groups)
    return out


def _compression(method: str) -> CompressionConfig:
    return CompressionConfig(method=method, fwd_codec="quant:4" if method != "none" else "identity",
                             bwd_codec="quant:8" if method != "none" else "identity")


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_message_is_received_with_the_bytes_and_dtype_it_was_sent(method, schedule):
    """Every method, fresh and repeated steps (AQ-SGD: first visits raw, later ones compressed;
    Clapping-FU: fresh steps raw): each receive buffer has the size and dtype of its send."""
    for pp, m in ((2, 3), (3, 2)):
        groups = record_steps(pp, m, schedule, lambda r: _compression(method))
        replay(groups)
        sizes = {op[3] for seq in groups for g in seq for op in g}
        if method in ("aqsgd", "clapping-fu"):  # raw and compressed payloads both travelled
            assert len(sizes) >= 2, (method, sizes)


def test_replay_catches_a_size_mismatch():
    """A sender posting 16-byte payloads (dense fp32) against a receiver expecting a 4-bit code:
    the tags match, so the old order-only replay passed; the new one names the bytes."""
    def compression_of(rank):
        return _compression("none") if rank == 0 else _compression("direct")
    groups = record_steps(2, 2, "1f1b", compression_of, fresh=[True])
    replay(_tags(groups))  # order and tags alone agree
    with pytest.raises(AssertionError, match=r"sent \(\('fwd', 0, 'payload'\), 16, 'torch.float32'\), received as"):
        replay(groups)


# --- a real tp x pp x dp job: p2p messages and every communicator's collectives ---------------------
_COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "barrier")


def _group_key(group) -> tuple:
    import torch.distributed as dist
    g = group or dist.group.WORLD
    return (getattr(g, "group_name", ""), tuple(dist.get_process_group_ranks(g)))


def _nbytes(x) -> tuple:
    tensors = x if isinstance(x, (list, tuple)) else [x]
    return sum(t.numel() * t.element_size() for t in tensors), str(tensors[0].dtype)


def _record_collectives(log: list):
    """Wrap torch.distributed's collectives (in this forked rank) to log (group, op, bytes, dtype)
    in issue order; returns the function that puts the originals back."""
    import inspect

    import torch.distributed as dist
    originals = {name: getattr(dist, name) for name in _COLLECTIVES}
    for name, real in originals.items():
        signature = inspect.signature(real)

        def wrapper(*args, _real=real, _name=name, _sig=signature, **kwargs):
            bound = _sig.bind(*args, **kwargs).arguments
            tensor = bound.get("tensor", bound.get("tensor_list"))  # all_gather: what this rank contributes
            log.append((_group_key(bound.get("group")), _name, *(_nbytes(tensor) if tensor is not None else (0, ""))))
            return _real(*args, **kwargs)
        setattr(dist, name, wrapper)
    return lambda: [setattr(dist, name, real) for name, real in originals.items()]


def _job_worker(rank, world, configs, steps):
    out = []
    for argv in configs:
        tr = make_trainer(rank, world, argv)
        p2p_log, coll_log, fresh = [], [], []
        real = tr.p2p.transport

        def transport(ops, _real=real, _log=p2p_log):
            _log.append([_op(o) for o in ops])
            return _real(ops)
        tr.p2p.transport = transport
        tr.p2p.early_recv = False  # the NCCL path: the stream-ordered replay applies
        restore = _record_collectives(coll_log)
        for _ in range(steps):
            batch = tr.data.train.next_batch()
            fresh.append(bool(batch.fresh))
            tr.train_step(batch)
        restore()
        out.append({"p2p": p2p_log, "coll": coll_log, "fresh": fresh})
    return out


def check_collectives(logs: list) -> None:
    """Every member of every communicator issued the same collectives (op, bytes, dtype) in the
    same order; AssertionError naming the first difference."""
    by_group: dict = {}
    for rank, log in enumerate(logs):
        for key, *call in log:
            by_group.setdefault(key, {}).setdefault(rank, []).append(tuple(call))
    for (name, ranks), calls in by_group.items():
        missing = [r for r in ranks if r not in calls]
        assert not missing, f"group {name} {ranks}: ranks {missing} issued none of its collectives"
        first = calls[ranks[0]]
        for r in ranks[1:]:
            if calls[r] != first:
                i = next((i for i, (a, b) in enumerate(zip(first, calls[r])) if a != b), min(len(first), len(calls[r])))
                raise AssertionError(f"group {name} {ranks}: collective {i} is {first[i:i + 1]} on rank {ranks[0]} "
                                     f"but {calls[r][i:i + 1]} on rank {r}")


JOB_METHODS = [["--pp-compression-method", "aqsgd", "--pp-fwd-codec", "quant:4", "--pp-bwd-codec", "quant:8"],
               ["--pp-compression-method", "clapping-fu", "--pp-fwd-codec", "topk:0.25", "--pp-bwd-codec", "quant:8",
                "--pp-bwd-compression-method", "ef21"]]


@pytest.fixture(scope="module")
def tp2pp2dp2():
    """tp=2 x pp=2 x dp=2 (8 forked gloo ranks), AQ-SGD and Clapping-FU, 4 steps, fresh every
    other step (--lazy-sampling-period 2)."""
    configs = [tiny_args(layers=2, extra=["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                          "--lazy-sampling-period", "2", *m]) for m in JOB_METHODS]
    return run_ranks(_job_worker, 8, configs, 4)


def test_a_real_job_receives_every_message_as_sent(tp2pp2dp2):
    for c in range(len(JOB_METHODS)):
        assert tp2pp2dp2[0][c]["fresh"] == [True, False, True, False]
        replay([res[c]["p2p"] for res in tp2pp2dp2])
        sizes = {op[3] for res in tp2pp2dp2 for g in res[c]["p2p"] for op in g}
        assert len(sizes) >= 3, sizes  # raw and compressed payloads, both directions


def test_a_real_job_issues_every_communicator_s_collectives_in_one_order(tp2pp2dp2):
    for c in range(len(JOB_METHODS)):
        logs = [res[c]["coll"] for res in tp2pp2dp2]
        check_collectives(logs)
        ops = {call[1] for log in logs for call in log}
        assert {"all_reduce", "all_gather"} <= ops, ops  # dp buckets, tp gathers of the boundary


def test_the_collective_check_catches_a_rank_dependent_order():
    group = ("1", (0, 1))
    a = [(group, "all_reduce", 64, "torch.float32"), (group, "all_gather", 32, "torch.float32")]
    check_collectives([a, list(a)])
    with pytest.raises(AssertionError, match="collective 0"):
        check_collectives([a, a[::-1]])
    with pytest.raises(AssertionError, match="issued none"):
        check_collectives([a, []])


# --- tensor-parallel split boundary (gloo, forked ranks) -----------------------------------------
METHODS = ["direct", "ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu"]


def _tp_worker(rank, world, configs, steps):
    """Train each config for `steps` steps; per config: params, loss, bytes this rank sent per step."""
    out = []
    for argv in configs:
        tr = make_trainer(rank, world, argv)
        for _ in range(steps):
            loss = tr.train_step(tr.data.train.next_batch())["loss"]
        sent = {}
        for (b, d, s), ch in tr.p2p.channels.items():
            if (d == "fwd") == (tr.ps.pp_rank == b):  # this rank is the sender
                sent[d] = sent.get(d, 0) + ch.stats.payload_bytes / steps
        params = {tr.stage.global_name(n): p.detach().clone() for n, p in tr.stage.named_parameters()}
        out.append({"loss": loss, "sent": sent, "params": params, "ref": tr.p2p.channel(0, "fwd", 0).ref_memory_bytes})
    return out


def _tp_args(tp, extra=()):
    return tiny_args(extra=["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", "2", *extra])


CODEC = ["--pp-compression-method", "ef21", "--pp-fwd-codec", "cast:bf16", "--pp-bwd-codec", "cast:bf16"]


@pytest.fixture(scope="module")
def tp2pp2():
    """One tp=2 x pp=2 run of: none, a codec, and the identity codec under every method."""
    identity = [_tp_args(2, ["--pp-compression-method", m, "--pp-fwd-codec", "identity", "--pp-bwd-codec",
                             "identity"]) for m in METHODS]
    return run_ranks(_tp_worker, 4, [_tp_args(2), _tp_args(2, CODEC)] + identity, 2)


def test_tp_split_halves_the_bytes_per_link(tp2pp2):
    """tp=2 x pp=2: each tp rank's link carries half of tp=1's bytes (the dense (b, s, h) tensor of
    every microbatch at tp=1), for none and for a codec; a reference holds half the bytes."""
    b, s, h, microbatches = 2, 16, 32, 4  # tiny_args: micro batch 2, global 8, seq 16, hidden 32
    for c, itemsize in ((0, 4), (1, 2)):  # none: fp32; cast:bf16: 2 bytes
        tp1_link = microbatches * b * s * h * itemsize
        for rank, res in enumerate(tp2pp2):
            assert res[c]["sent"] == {"fwd" if rank < 2 else "bwd": tp1_link / 2}, (c, rank, res[c]["sent"])
    assert tp2pp2[0][1]["ref"] * 2 == b * s * h * 4  # ef21's m (fp32) holds the slice


def test_tp_split_identity_codec_bit_identical_under_every_method(tp2pp2):
    for res in tp2pp2:
        ref = res[0]
        for m, out in zip(METHODS, res[2:]):
            if ref["loss"] == ref["loss"]:  # the last stage (nan elsewhere)
                assert out["loss"] == ref["loss"], m
            for name, value in ref["params"].items():
                assert torch.equal(value, out["params"][name]), f"{m}: {name} differs"


def test_seq_length_must_divide_by_tp_with_a_pipeline():
    from megaclap.config import parse_args
    from megaclap.config import ConfigError
    argv = _tp_args(2, ["--seq-length", "15", "--max-position-embeddings", "16"])
    with pytest.raises(ConfigError, match="--seq-length 15 is not divisible by --tensor-model-parallel-size 2"):
        parse_args(argv).validate(4)
