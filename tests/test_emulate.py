"""--pp-emulate: one process holds all P stages and gives the P-process gloo run's numbers, bit for
bit (fp32, CPU): losses, grad norms, parameters, both ends' Channel references and AQ-SGD stores,
payload bytes, for every method with lazy sampling; bf16 within the wire-precision tolerance;
fp16 skips and rollbacks; evaluation; and a deadlock is reported, not hung."""
import pytest
import torch

from megaclap.config import parse_args
from megaclap.config import ConfigError
from megaclap.parallel.emulate import run_pipeline
from megaclap.parallel.state import ParallelState
from megaclap.training.trainer import Trainer
from tests.dist import run_ranks
from tests.test_compression_pipeline import _channel_hashes, _digest
from tests.train_utils import make_trainer, tiny_args

STEPS = 3
# every method once forward or backward, clapping-fu also with a fresh-step codec
CONFIGS = {"none": ("none", "none", ()), "direct-ef": ("direct", "ef", ()), "ef21-aqsgd": ("ef21", "aqsgd", ()),
           "fu-fc": ("clapping-fu", "clapping-fc", ()),
           "aqsgd-fu-fresh": ("aqsgd", "clapping-fu", ("--clapping-fresh-codec", "quant:8"))}


def _body(tr: Trainer, steps: int, evaluate: bool = False) -> dict:
    """What the comparison needs from one stage after `steps` steps."""
    outs = [tr.train_step(tr.data.train.next_batch()) for _ in range(steps)]
    channels = _channel_hashes(tr) if tr.p2p is not None else {}
    channels.update({("e", *k): _digest(ch.e) for k, ch in tr.p2p.channels.items()})  # ef's residuals
    sent = {k: (ch.stats.raw_bytes, ch.stats.payload_bytes) for k, ch in tr.p2p.channels.items()}
    return {"stage": tr.ps.pp_rank, "last": tr.ps.is_last_stage, "rank": tr.ps.rank,
            "losses": [o["loss"] for o in outs], "norms": [o["grad_norm"] for o in outs],
            "skipped": [o["skipped"] for o in outs], "channels": channels, "sent": sent,
            "params": {tr.stage.global_name(n): p.detach().clone() for n, p in tr.stage.named_parameters()},
            "eval": tr.evaluate() if evaluate else None}


def _real(rank, world, argv, steps, evaluate=False):
    return _body(make_trainer(rank, world, argv), steps, evaluate)


def _emulated(rank, world, argv, steps, evaluate=False):
    """All stages in this one process (a forked child with one torch thread, as each real rank)."""
    cfg = parse_args(list(argv) + ["--pp-emulate"]).validate(world)
    process = ParallelState(1, 1, world, rank, torch.device("cpu"))
    return run_pipeline(process, cfg.parallel.pipeline_model_parallel_size,
                        lambda view: _body(Trainer(cfg, view, print_fn=lambda s: None), steps, evaluate))


def emulated(argv, steps, evaluate=False) -> list:
    return run_ranks(_emulated, 1, argv, steps, evaluate)[0]


def _args(pp: int, config: str, extra=()) -> list:
    fwd, bwd, more = CONFIGS[config]
    flags = ["--pipeline-model-parallel-size", str(pp), "--lazy-sampling-prob", "0.5",
             "--pp-compression-method", fwd, "--pp-bwd-compression-method", bwd, *more]
    if fwd != "none":
        flags += ["--pp-fwd-codec", "topk:0.2", "--pp-bwd-codec", "quant:4"]
    return tiny_args(gbs=8, mbs=2, extra=flags + list(extra))


def _same(a: list, b: list) -> bool:
    """Float lists equal, nan equal to nan (a skipped step's grad norm)."""
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))


def assert_identical(real: list, emu: list, what: str) -> None:
    assert [r["rank"] for r in real] == [e["rank"] for e in emu]
    for r, e in zip(real, emu):
        assert _same(r["norms"], e["norms"]) and r["skipped"] == e["skipped"], f"{what} stage {r['stage']}"
        if r["last"]:
            assert r["losses"] == e["losses"], f"{what}: losses {r['losses']} vs {e['losses']}"
        for name, value in r["params"].items():
            assert torch.equal(value, e["params"][name]), f"{what}: {name} differs"
        assert r["channels"] == e["channels"] and r["sent"] == e["sent"], f"{what} stage {r['stage']} channels"


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_emulated_pipeline_is_the_multi_process_run(config, pp):
    """Catches: a Channel endpoint shared by the two ends of a boundary (references would
    diverge from the real run's), a reduction in another order (norms, tied embedding), RNG or
    lazy-sampling state shared between stages, a message delivered to the wrong slot."""
    argv = _args(pp, config)
    real = run_ranks(_real, pp, argv, STEPS)
    emu = emulated(argv, STEPS)
    assert_identical(real, emu, f"{config} pp{pp}")
    if config != "none":  # references, residuals and stores are in play
        assert any(v not in ("none", ("send", "none"), ("recv", "none")) for r in real for v in r["channels"].values())
    assert real[-1]["losses"][0] != real[-1]["losses"][-1]


def test_dropout_streams_stay_per_stage_and_evaluation_matches():
    """Dropout draws from each stage's own RNG (seeded by its pp rank), swapped in with the baton;
    forward-only evaluation through the in-process mailbox equals the real one."""
    argv = _args(4, "none", extra=["--hidden-dropout", "0.1", "--attention-dropout", "0.1"])
    real = run_ranks(_real, 4, argv, 2, True)
    emu = emulated(argv, 2, True)
    assert_identical(real, emu, "dropout")
    assert real[-1]["eval"] == emu[-1]["eval"]


def test_fp16_skips_and_rollbacks_match():
    argv = _args(2, "fu-fc", extra=["--fp16", "--initial-loss-scale", str(2.0 ** 22)])
    real = run_ranks(_real, 2, argv, 6)
    emu = emulated(argv, 6)
    assert any(real[0]["skipped"]) and not all(real[0]["skipped"])
    assert_identical(real, emu, "fp16")


def test_bf16_within_the_wire_precision_tolerance():
    argv = _args(2, "fu-fc", extra=["--bf16"])
    real = run_ranks(_real, 2, argv, STEPS)
    emu = emulated(argv, STEPS)
    diffs = [abs(a - b) for a, b in zip(real[-1]["losses"], emu[-1]["losses"])]
    assert max(diffs) < 1e-3, diffs  # tests/test_wire_precision.py's bf16 tolerance


def test_a_deadlock_is_reported():
    """A stage waiting for a message nobody sends ends the emulation with the stuck stages named."""
    from megaclap.parallel.p2p import Op

    def program(view):
        transport = view.transport()
        if view.pp_rank == 1:
            [work] = transport([Op(False, torch.empty(1), view.prev_rank, ("fwd", 0, "payload"))])
            work.wait()
    with pytest.raises(RuntimeError, match=r"deadlock: stage 1 waits for message \('fwd', 0, 'payload'\)"):
        run_pipeline(ParallelState(1, 1, 1, 0, torch.device("cpu")), 2, program)


@pytest.mark.parametrize("extra, match", [
    (["--tensor-model-parallel-size", "2"], "--pp-emulate with --tensor-model-parallel-size"),
    (["--sim-link-bandwidth", "1gbit"], "--sim-links instead"),
])
def test_unsupported_combinations_are_refused(extra, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(tiny_args(extra=["--pipeline-model-parallel-size", "2", "--pp-emulate", *extra])).validate(2)


def test_data_parallel_ranks_each_emulate_their_pipeline():
    """dp=2: two processes, each holding both stages, reduce gradients over the real dp group in
    the same order: the pp2 x dp2 four-process run's numbers."""
    argv = _args(2, "ef21-aqsgd")
    real = run_ranks(_real, 4, argv, 2)               # ranks 0, 1: stage 0 of dp 0, 1; ranks 2, 3: stage 1
    emu = run_ranks(_emulated, 2, argv, 2)            # dp rank d: [stage 0, stage 1]
    assert_identical([real[0], real[2]], emu[0], "dp rank 0")
    assert_identical([real[1], real[3]], emu[1], "dp rank 1")
