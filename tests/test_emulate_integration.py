"""--pp-emulate with what landed beside it: dropout seeded from the samples under lazy sampling
(issue 21.1), the fp16 skip decision fed by the Channels' finite checks (issue 23.3), the bf16/fp32
stop at a NaN loss (issue 23.4) and --full-validation (issue 20). Each emulated run must give the
multi-process gloo run's numbers."""
import pytest
import torch

from megaclap.compression.channels import Channel
from megaclap.config import parse_args
from megaclap.parallel.emulate import run_pipeline
from megaclap.parallel.state import ParallelState
from megaclap.training.trainer import Trainer
from tests import test_nonfinite, test_repeat_dropout
from tests.dist import run_ranks
from tests.test_emulate import _emulated, _real, assert_identical
from tests.train_utils import make_trainer, tiny_args


def _emulate(rank, world, argv, program):
    """program(trainer) on every stage of this process's emulated pipeline; results by stage."""
    cfg = parse_args(list(argv) + ["--pp-emulate"]).validate(world)
    process = ParallelState(1, 1, world, rank, torch.device("cpu"))
    return run_pipeline(process, cfg.parallel.pipeline_model_parallel_size,
                        lambda view: program(Trainer(cfg, view, print_fn=lambda s: None)))


# --- (a) dropout from the samples, lazy sampling ------------------------------------------------
def _dropout_args(pp: int, lr: str) -> list:
    """test_repeat_dropout's run (clapping-fu, topk, lazy period 2, dropout 0.3) at tp 1, pp stages
    of one layer each."""
    argv = test_repeat_dropout._args()
    argv[argv.index("--tensor-model-parallel-size") + 1] = "1"
    argv[argv.index("--pipeline-model-parallel-size") + 1] = str(pp)
    argv[argv.index("--num-layers") + 1] = str(pp)
    argv[argv.index("--lr") + 1] = lr
    return argv


def _deltas_emulated(rank, world, argv, steps):
    seen = test_repeat_dropout._record_deltas()

    def program(tr):
        fresh = []
        for _ in range(steps):
            batch = tr.data.train.next_batch()
            tr.train_step(batch)
            fresh.append(bool(batch.fresh))
        return fresh
    fresh = _emulate(rank, world, argv, program)[0]
    return {"delta": seen["delta"], "fresh": fresh}


def test_emulated_dropout_with_lazy_sampling_is_the_multi_process_run():
    """Training (lr 1e-3): bit-identical to 4 processes. Frozen (lr 0): every repeated step sends
    an exactly zero delta on every Channel of every stage. Catches: an emulated stage that seeds
    its dropout from another stage's first layer or from the step instead of the drawing step
    (StepInfo lost on the way to the runner), or draws from a generator the baton swapped."""
    argv = _dropout_args(4, "1e-3")
    real = run_ranks(_real, 4, argv, 4)
    emu = run_ranks(_emulated, 1, argv, 4)[0]
    assert_identical(real, emu, "dropout + lazy sampling")
    frozen = run_ranks(_deltas_emulated, 1, _dropout_args(4, "0"), 4)[0]
    assert frozen["fresh"] == [True, False, True, False]
    stages = {(boundary, direction) for _, boundary, direction, _ in frozen["delta"]}
    assert stages == {(b, d) for b in range(3) for d in ("fwd", "bwd")}  # every Channel was checked
    assert {step for step, *_ in frozen["delta"]} == {1, 3}
    assert all(v == 0.0 for v in frozen["delta"].values()), frozen["delta"]


# --- (b) fp16: a non-finite boundary value skips the same steps -------------------------------
def _fp16_real(rank, world, argv, steps, only_rank):
    Channel.send = test_nonfinite._inject_dropped_inf(test_nonfinite.BAD_STEP, only_rank)
    return _real(rank, world, argv, steps)


def _fp16_emulated(rank, world, argv, steps, only_rank):
    Channel.send = test_nonfinite._inject_dropped_inf(test_nonfinite.BAD_STEP, only_rank)
    return _emulated(rank, world, argv, steps)


@pytest.mark.parametrize("dp", [1, 2])
def test_emulated_fp16_skips_the_steps_the_multi_process_run_skips(dp):
    """An inf that randk drops at step 3 (with dp 2: on dp rank 0's sender only). Catches: an
    emulated stage whose Channel check stays out of the one skip flag (the receiving stage, which
    never sees the inf, would step while the sender skips), or a flag reduced over the processes
    but not over the emulated stages (or the reverse)."""
    steps = test_nonfinite.STEPS
    argv = tiny_args(layers=2, gbs=4 * dp, extra=[
        "--pipeline-model-parallel-size", "2", "--fp16", "--initial-loss-scale", "1024",
        "--pp-compression-method", "ef", "--pp-fwd-codec", "randk:0.25", "--pp-bwd-codec", "quant:8",
        "--lazy-sampling-period", "2", "--train-iters", str(steps)])
    only = 0 if dp == 2 else None
    real = run_ranks(_fp16_real, 2 * dp, argv, steps, only)
    emu = run_ranks(_fp16_emulated, dp, argv, steps, only)
    expected = [step == test_nonfinite.BAD_STEP for step in range(steps)]
    for d in range(dp):
        stages = [real[d], real[dp + d]]  # global ranks of dp rank d: stage 0, stage 1
        assert all(r["skipped"] == expected for r in stages + emu[d]), [r["skipped"] for r in emu[d]]
        assert_identical(stages, emu[d], f"fp16 dp rank {d}")


# --- (c) --full-validation ---------------------------------------------------------------------
def _validate(tr: Trainer) -> dict:
    """Two evaluations, the loop (with its validation lines), then one more evaluation."""
    lines = []
    tr.print = lines.append
    first = [tr.evaluate(), tr.evaluate()]
    tr.train()
    return {"last": tr.ps.is_last_stage, "dp": tr.ps.dp_rank, "evals": first + [tr.evaluate()],
            "lines": [s for s in lines if "validation loss" in s]}


def _validate_real(rank, world, argv):
    return _validate(make_trainer(rank, world, argv))


def _validate_emulated(rank, world, argv):
    return _emulate(rank, world, argv, _validate)


@pytest.mark.parametrize("pp, dp", [(4, 1), (2, 2)])
def test_emulated_full_validation_gives_the_multi_process_loss(pp, dp):
    """Catches: emulated first and last stages walking different validation batches, a dp rank
    reading another rank's share of the fixed split, or a loss reduced in another order."""
    argv = tiny_args(gbs=4 * dp, extra=["--pipeline-model-parallel-size", str(pp), "--full-validation",
                                        "--eval-iters", "2", "--train-iters", "4", "--eval-interval", "2",
                                        "--log-interval", "100"])
    real = [r for r in run_ranks(_validate_real, pp * dp, argv) if r["last"]]
    emu = [s for per in run_ranks(_validate_emulated, dp, argv) for s in per if s["last"]]
    assert [r["dp"] for r in real] == [e["dp"] for e in emu] == list(range(dp))
    for r, e in zip(real, emu):
        assert r["evals"] == e["evals"] and r["lines"] == e["lines"]
    logged = real[0]
    assert logged["evals"][0] == logged["evals"][1] != logged["evals"][2]  # fixed tokens; it trained
    assert len(logged["lines"]) == 2  # iterations 2 and 4


# --- bf16/fp32: a NaN loss stops every stage at the same iteration ------------------------------
def _nan_loss_values_at(bad_step: int, microbatches: int) -> None:
    """The last stage's loss values are NaN at optimizer step `bad_step` while every gradient stays
    finite (a detached NaN is added): only the last stage can see the step is bad."""
    from megaclap.model.gpt import GPTStage
    real, calls = GPTStage.forward, {"n": 0}

    def forward(self, x, labels=None, *args, **kwargs):
        out = real(self, x, labels, *args, **kwargs)
        if self.training and labels is not None:
            calls["n"] += 1
            if (calls["n"] - 1) // microbatches == bad_step:
                out = out + torch.full_like(out, float("nan")).detach()
        return out
    GPTStage.forward = forward


def _stop_at_nan(tr: Trainer) -> str:
    from megaclap.training.trainer import NonFiniteStep
    try:
        tr.train()
    except NonFiniteStep as e:
        return f"stage {tr.ps.pp_rank}: {str(e).split(';')[0]}"
    return f"stage {tr.ps.pp_rank}: trained to iteration {tr.iteration}"


def _nan_emulated(rank, world, argv):
    _nan_loss_values_at(bad_step=2, microbatches=4)
    return _emulate(rank, world, argv, _stop_at_nan)


def _nan_real(rank, world, argv):
    _nan_loss_values_at(bad_step=2, microbatches=4)
    return _stop_at_nan(make_trainer(rank, world, argv))


def test_emulated_nan_loss_stops_every_stage_like_the_multi_process_run():
    """Catches: the first bad iteration reduced over the processes but not over the emulated
    stages (only the last stage, which sees the loss, would stop; the others would train on)."""
    argv = tiny_args(extra=["--pipeline-model-parallel-size", "2", "--train-iters", "6",
                            "--log-interval", "2"])
    real = run_ranks(_nan_real, 2, argv)
    emu = run_ranks(_nan_emulated, 1, argv)[0]
    assert real == emu == [f"stage {s}: iteration 3: the loss, the gradient norm or a pipeline Channel "
                           "value is NaN or inf" for s in range(2)], (real, emu)
