"""Data-parallel gradients reduced in persistent buckets by backward hooks (issue 15): the
result is bit-identical to the reduction after backward, buckets go out during the last
microbatch's backward (none during earlier ones), and grads are views of the flat buffer."""
import torch

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
    buf.start(2)
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
