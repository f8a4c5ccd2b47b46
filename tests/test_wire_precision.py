"""bf16 and fp16 on the pipeline wire at PP=2 against the fp32 run.

Tolerance: every step's loss within 1e-3 of fp32's (bf16) and 5e-4 (fp16, a fixed-looking but
dynamic scale that never overflows here), measured differences on this tiny model are ~1.5e-4
and ~1e-4. A wire that reinterprets bytes, drops the loss scale's unscaling, or skips steps
moves the loss by 1e-2 or more."""
import pytest
import torch

from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

STEPS = 4


def _worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    outs = [tr.train_step(tr.data.train.next_batch()) for _ in range(steps)]
    ch = tr.p2p.channel(0, "fwd", 0)
    return {"last": tr.ps.is_last_stage, "losses": [o["loss"] for o in outs],
            "skipped": sum(o["skipped"] for o in outs), "wire": (ch.dtype, ch.raw_nbytes)}


def _run(extra):
    argv = tiny_args(layers=2, gbs=4, extra=["--pipeline-model-parallel-size", "2", *extra])
    return [r for r in run_ranks(_worker, 2, argv, STEPS) if r["last"]][0]


@pytest.fixture(scope="module")
def fp32():
    return _run([])


@pytest.mark.parametrize("flags,dtype,tol", [(["--bf16"], torch.bfloat16, 1e-3),
                                             (["--fp16", "--initial-loss-scale", "4096"], torch.float16, 5e-4)])
def test_half_precision_wire_matches_fp32(fp32, flags, dtype, tol):
    out = _run(flags)
    numel = 2 * 16 * 32  # micro batch x seq x hidden
    assert out["wire"] == (dtype, numel * 2) and fp32["wire"] == (torch.float32, numel * 4)
    assert out["skipped"] == 0
    diffs = [abs(a - b) for a, b in zip(out["losses"], fp32["losses"])]
    assert max(diffs) < tol, f"{flags}: loss differs from fp32 by {diffs}"
    assert fp32["losses"][0] - fp32["losses"][-1] > 10 * tol  # the run moved: the comparison means something
