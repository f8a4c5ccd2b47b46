"""Data-parallel gradients reduced in persistent buckets by backward hooks (issue 15): the
result is bit-identical to the reduction after backward, buckets go out during the last
microbatch's backward (none during earlier ones), and grads are views of the flat buffer.
Readiness counts are learned on the first step (issue 23): a parameter accumulated twice per
microbatch is reduced once, after its last gradient; an unused one does not hold its bucket."""
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from megaclap.parallel.p2p import StepInfo
from megaclap.parallel.schedules import forward_backward
from megaclap.training.grads import GradBuffer, all_reduce_coalesced
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

ARGV = tiny_args(layers=2, gbs=8, mbs=2)  # dp=2: 2 microbatches per rank


def _backward(tr, batch):
    forward_backward(tr.stage, tr.ps, None, tr._microbatches(batch), StepInfo(step=0, fresh=True))


def _worker(rank, world):
    ref = make_trainer(rank, world, ARGV)  # same init and data as `tr` below
    ref.grad_buffer.remove_hooks()
    for p in ref.stage.parameters():
        p.grad = None
    _backward(ref, ref.data.train.next_batch())
    all_reduce_coalesced([p.grad for p in ref.stage.parameters()], ref.ps.dp.group, ref.ps.dp.size)

    tr = make_trainer(rank, world, ARGV)
    tr.grad_buffer.remove_hooks()
    buf = tr.grad_buffer = GradBuffer(tr.stage, tr.ps, bucket_bytes=8192)
    batch = tr.data.train.next_batch()
    buf.start(2)  # the first step learns the accumulation counts: every bucket goes out in finish()
    _backward(tr, batch)
    assert buf.launch_log == []
    buf.finish()
    buf.start(2)  # the same batch again, overlapped
    _backward(tr, batch)
    before_finish = list(buf.launch_log)
    buf.finish()
    n_params = len(buf.params)
    views = all(p.grad.data_ptr() == buf.views[id(p)].data_ptr() for p in tr.stage.parameters())
    same = {n: torch.equal(p.grad, q.grad) for (n, p), q in zip(tr.stage.named_parameters(), ref.stage.parameters())}
    return {"same": same, "launched": before_finish, "buckets": len(buf.buckets), "hooks": buf.hooks_fired,
            "params": n_params, "views": views}


def test_overlapped_dp_reduction_bit_identical_and_launched_during_last_backward():
    for res in run_ranks(_worker, 2):
        assert all(res["same"].values()), [n for n, ok in res["same"].items() if not ok]
        assert res["buckets"] >= 3 and res["views"]
        assert res["hooks"] == 2 * res["params"]  # two microbatches, every parameter used
        launched = res["launched"]
        assert len(launched) == res["buckets"]  # every bucket went out from a hook, in order
        assert [i for i, _ in launched] == list(range(res["buckets"]))
        first_at, last_at = launched[0][1], launched[-1][1]
        assert first_at > res["params"], "a bucket was all-reduced during the first microbatch's backward"
        assert first_at < res["hooks"], "the first bucket waited for the end of backward: no overlap"
        assert last_at == res["hooks"]


def test_grads_stay_views_when_someone_drops_them():
    tr = make_trainer(0, 1, tiny_args(layers=2))
    tr.grad_buffer = GradBuffer(tr.stage, tr.ps, flat=True)  # the buffers, as with dp > 1
    p = next(tr.stage.parameters())
    p.grad = None
    tr.train_step(tr.data.train.next_batch())
    assert p.grad.data_ptr() == tr.grad_buffer.views[id(p)].data_ptr()
    assert torch.count_nonzero(p.grad) > 0


# --- readiness learned on the first step (issue 23) -----------------------------------------------
class _Toy(torch.nn.Module):
    """`twice` accumulates two gradients per backward (used inside and outside a reentrant
    checkpoint); `unused` none. Registered last, so each sits in the first bucket of its kind."""

    def __init__(self, rank: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(8, generator=g))
        self.unused = torch.nn.Parameter(torch.randn(8, generator=g))
        self.twice = torch.nn.Parameter(torch.randn(8, generator=g))
        self.tied, self.extra_use = False, False

    def forward(self, x):
        y = checkpoint(lambda t: t * self.twice, x, use_reentrant=True) * self.twice * self.a
        if self.extra_use:  # a second checkpointed segment: a third accumulation per backward
            y = checkpoint(lambda t: t * self.twice, y, use_reentrant=True)
        return y.square().sum()


def _toy_step(model, buf, inputs):
    if buf is not None:
        buf.start(len(inputs))
    for x in inputs:  # microbatches: one backward each
        model(x.clone().requires_grad_(True)).backward()
    if buf is not None:
        model.launched_in_backward = list(buf.launch_log)
        buf.finish()


def _toy_worker(rank, world):
    ps = SimpleNamespace(dp=SimpleNamespace(group=dist.group.WORLD, size=world), pp_size=1)
    inputs = [torch.randn(8, generator=torch.Generator().manual_seed(10 * rank + i)) for i in range(2)]
    ref = _Toy(rank)
    for p in ref.parameters():
        p.grad = torch.zeros_like(p)
    _toy_step(ref, None, inputs)
    all_reduce_coalesced([p.grad for p in ref.parameters()], dist.group.WORLD, world)
    model = _Toy(rank)
    buf = GradBuffer(model, ps, bucket_bytes=1)  # one parameter per bucket: `twice` is bucket 0
    out = {}
    for step in range(2):
        _toy_step(model, buf, inputs)
        out[step] = {n: torch.equal(p.grad, q.grad) for (n, p), q in zip(model.named_parameters(), ref.parameters())}
    learned = getattr(buf, "per_microbatch", None) or {}
    out["learned"] = {n: learned.get(id(p)) for n, p in model.named_parameters()}
    out["launch_log"] = model.launched_in_backward  # of the second step, before finish()
    model.extra_use = True
    try:
        _toy_step(model, buf, inputs)
    except RuntimeError as e:
        out["error"] = str(e)
    return out


@pytest.fixture(scope="module")
def toy():
    return run_ranks(_toy_worker, 2)


def test_a_parameter_accumulated_twice_per_microbatch_is_reduced_once_correctly(toy):
    for res in toy:
        for step in (0, 1):  # the learning step and the overlapped one
            assert all(res[step].values()), (step, res[step])
        assert res["learned"] == {"a": 1, "unused": 0, "twice": 2}


def test_an_unused_parameter_does_not_hold_back_its_bucket(toy):
    """Bucket order is reversed registration: twice, unused, a. With `unused` learned as 0 its
    bucket goes out right after `twice`'s, during backward, not in finish()."""
    for res in toy:
        hooks_per_step = 2 * (2 + 1)  # two microbatches x (twice: 2, a: 1)
        assert res["launch_log"] == [(0, hooks_per_step), (1, hooks_per_step), (2, hooks_per_step)]


def test_a_changed_accumulation_count_is_refused(toy):
    for res in toy:
        assert "gradient of twice accumulated" in res["error"] and "learned 2 per microbatch" in res["error"]


def test_without_dp_grads_are_fresh_tensors_and_the_steps_bit_identical():
    """dp = 1: no flat buffers (nothing to reduce); backward creates each grad, as plain PyTorch
    does. Losses, grad norms and parameters equal the flat buffers' bit for bit over steps of
    two microbatches (the second accumulates into the first), Llama flavour with GQA too."""
    for flavour in ("gpt2", "llama"):
        argv = tiny_args(flavour, layers=2, gbs=4, mbs=2)
        runs = []
        for flat in (True, False):
            tr = make_trainer(0, 1, argv)
            tr.grad_buffer = GradBuffer(tr.stage, tr.ps, flat=flat)
            outs = [tr.train_step(tr.data.train.next_batch()) for _ in range(3)]
            runs.append((outs, {n: p.detach().clone() for n, p in tr.stage.named_parameters()}, tr))
        (flat_out, flat_params, _), (plain_out, plain_params, plain) = runs
        pairs = [[(o["loss"], o["grad_norm"]) for o in out] for out in (plain_out, flat_out)]
        assert pairs[0] == pairs[1]
        assert all(torch.equal(plain_params[n], flat_params[n]) for n in flat_params)
        assert not plain.grad_buffer.buffers and make_trainer(0, 1, argv).grad_buffer.flat is False
        plain.grad_buffer.start(2)
        assert all(p.grad is None for p in plain.stage.parameters())  # backward creates them
