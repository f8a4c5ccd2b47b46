"""Pipeline (and 3D) layouts equal the single-process model: losses and gradients, 1e-5."""
import functools

import pytest
import torch

from megaclap.model.init import shard
from tests.dist import run_ranks
from tests.train_utils import tiny_args, train_worker

STEPS = 3
LAYOUTS = {  # name: (world, tp, pp)
    "pp2": (2, 1, 2), "pp4": (4, 1, 4), "tp2pp2": (4, 2, 2), "pp2dp2": (4, 1, 2), "tp2pp2dp2": (8, 2, 2),
}


@functools.lru_cache(maxsize=None)
def reference(flavour: str):
    return train_worker(0, 1, tiny_args(flavour), STEPS, evaluate=True)


def _layout_args(flavour, tp, pp, schedule):
    return tiny_args(flavour, extra=["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size",
                                     str(pp), "--pipeline-schedule", schedule])


def assert_matches_reference(results, ref):
    for res in results:
        if res["last"] and res["tp"][1] == 0:
            torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-5)
        tp_size, tp_rank = res["tp"]
        for name, (grad, partition) in res["grads"].items():
            expect = shard(ref["grads"][name][0], partition, tp_size, tp_rank)
            torch.testing.assert_close(grad, expect, rtol=1e-5, atol=1e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, flavour, schedule):
    world, tp, pp = LAYOUTS[layout]
    results = run_ranks(train_worker, world, _layout_args(flavour, tp, pp, schedule), STEPS)
    assert_matches_reference(results, reference(flavour))


@pytest.mark.parametrize("gbs", [2, 8, 16])  # microbatches 1 < pp, 4 == pp, 8 > pp
def test_microbatch_counts_around_pp(gbs):
    results = run_ranks(train_worker, 4, _layout_args("gpt2", 1, 4, "1f1b") + ["--global-batch-size", str(gbs)], 2)
    ref = train_worker(0, 1, tiny_args("gpt2", extra=["--global-batch-size", str(gbs)]), 2)
    assert_matches_reference(results, ref)
    m = gbs // 2
    for res in results:
        assert max(res["peaks"]) <= min(m, 4 - res["pp_rank"])


def test_activation_bound_1f1b_vs_gpipe():
    """M = 8 microbatches on 4 stages: 1F1B holds exactly pp - r on stage r, GPipe holds M."""
    for schedule, expected in (("1f1b", lambda r: 4 - r), ("gpipe", lambda r: 8)):
        argv = _layout_args("gpt2", 1, 4, schedule) + ["--global-batch-size", "16"]
        for res in run_ranks(train_worker, 4, argv, 1):
            assert res["peaks"][0] == expected(res["pp_rank"]), (schedule, res["pp_rank"], res["peaks"])


def test_forward_only_evaluation_equals_single_process():
    ref = reference("gpt2")
    results = run_ranks(train_worker, 2, _layout_args("gpt2", 1, 2, "1f1b"), STEPS, True)
    last = [r for r in results if r["last"]][0]
    assert last["eval"] == pytest.approx(ref["eval"], rel=1e-5, abs=1e-5)


def _stuck_worker(rank, world, argv):
    """Both ranks set up; then rank 1 stops responding in the middle of training."""
    import time
    from tests.train_utils import make_trainer
    tr = make_trainer(rank, world, argv)
    if rank == 1:
        time.sleep(8)
        return "slept"
    start = time.time()
    try:
        tr.train_step(tr.data.train.next_batch())
    except Exception as e:  # the timeout surfaces as an exception, not a hang
        return ("error", type(e).__name__, str(e)[:300], time.time() - start)
    return ("no error", time.time() - start)


def test_stuck_peer_times_out():
    argv = _layout_args("gpt2", 1, 2, "1f1b") + ["--distributed-timeout-minutes", "0.05"]
    out = run_ranks(_stuck_worker, 2, argv, timeout_s=60)
    assert out[0][0] == "error", out[0]
    assert "timeout" in out[0][2].lower() or "timed out" in out[0][2].lower(), out[0]
    assert "rank 1 did not complete" in out[0][2] and "--distributed-timeout-minutes" in out[0][2], out[0]
    assert out[0][3] < 25, f"took {out[0][3]:.1f}s to fail"
