"""--pp-emulate around the training loop: checkpoints resume across emulated and real layouts
(both ways, losses continue exactly), the entry point's log line, TensorBoard and --timing-json,
the time model fed by a real multi-process run, and the one-device NCCL check."""
import json
import os

import pytest
import torch

from megaclap.config import parse_args
from megaclap.parallel.emulate import run_pipeline
from megaclap.parallel.state import ParallelState
from megaclap.training.checkpointing import Checkpointer
from megaclap.training.trainer import Trainer
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

COMPRESSION = ["--pipeline-model-parallel-size", "2", "--pp-compression-method", "clapping-fu",
               "--pp-fwd-codec", "topk:0.2", "--pp-bwd-codec", "quant:4", "--lazy-sampling-prob", "0.5"]


def _steps(tr: Trainer, load: bool, save: bool, steps: int) -> dict:
    quiet = dict(print_fn=lambda s: None)
    if load:
        Checkpointer(tr.cfg, tr.ps, **quiet).load(tr)
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(steps)]
    if save:
        Checkpointer(tr.cfg, tr.ps, **quiet).save(tr)
    return {"losses": losses, "last": tr.ps.is_last_stage, "iteration": tr.iteration}


def _real(rank, world, argv, load, save, steps):
    return _steps(make_trainer(rank, world, argv), load, save, steps)


def _emulated(rank, world, argv, load, save, steps):
    cfg = parse_args(list(argv) + ["--pp-emulate"]).validate(world)
    return run_pipeline(ParallelState(1, 1, world, rank, torch.device("cpu")), 2,
                        lambda view: _steps(Trainer(cfg, view, print_fn=lambda s: None), load, save, steps))


def _last(results) -> dict:
    return [r for r in results if r["last"]][0]


@pytest.mark.parametrize("first, then", [("real", "emulated"), ("emulated", "real")])
def test_resume_across_emulated_and_real_layouts(tmp_path, first, then):
    """A checkpoint written by one layout continues in the other exactly as never stopping:
    catches per-stage files missing or mixed up, Channel references, data cursor or RNG not
    written per stage by the emulated run."""
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(layers=2, gbs=8, mbs=2, extra=COMPRESSION + ["--save", ckpt, "--load", ckpt])
    straight = _last(run_ranks(_real, 2, argv, False, False, 6))["losses"]
    launch = {"real": lambda *a: run_ranks(_real, 2, argv, *a), "emulated": lambda *a: run_ranks(_emulated, 1, argv, *a)[0]}
    launch[first](False, True, 3)
    assert sorted(os.listdir(os.path.join(ckpt, "iter_0000003"))) == ["mp_rank_00_000", "mp_rank_00_001"]
    for stage in ("mp_rank_00_000", "mp_rank_00_001"):
        assert sorted(os.listdir(os.path.join(ckpt, "iter_0000003", stage))) == ["dp_rank_000.pt", "model_optim_rng.pt"]
    resumed = _last(launch[then](True, False, 3))
    assert resumed["iteration"] == 6
    assert resumed["losses"] == straight[3:], (resumed["losses"], straight)


def test_entry_point_logs_models_and_writes_the_timing_json(tmp_path, capsys):
    """One process, four stages, through pretrain's main: the log line carries the modeled step
    per link, TensorBoard its scalars, --timing-json per-step and per-stage measurements whose
    bytes match the Channels' (fresh steps send raw with clapping-fu) and every link's price."""
    from megaclap.training.pretrain import main
    from tools.ablate_report import read_scalars
    path, tb = str(tmp_path / "timing.json"), str(tmp_path / "tb")
    argv = tiny_args(layers=4, gbs=8, mbs=2, extra=COMPRESSION + [
        "--pipeline-model-parallel-size", "4", "--pp-emulate", "--train-iters", "6", "--log-interval", "3",
        "--eval-interval", "6", "--sim-links", "1mbit:5ms,1gbit@protocol-nanogpt", "--timing-json", path,
        "--tensorboard-dir", tb])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pp 4 (all stages in each process: --pp-emulate)" in out
    assert out.count("modeled step 1mbit:5ms (ms)") == 2 and "modeled tokens per second 1gbit@protocol-nanogpt" in out
    doc = json.load(open(path))
    assert doc["emulated"] and doc["pp"] == 4 and list(doc["links"]) == ["ideal", "1mbit:5ms", "1gbit@protocol-nanogpt"]
    assert [s["iteration"] for s in doc["steps"]] == list(range(1, 7)) and len(doc["intervals"]) == 2
    raw = 2 * 16 * 32 * 4  # one fp32 (b, s, h) boundary tensor
    for stage in doc["stages"][:-1]:
        if "fresh" in stage["bytes"]["fwd"]:
            assert stage["bytes"]["fwd"]["fresh"] == raw
        assert stage["bytes"]["fwd"].get("repeat", 0) < raw
    for step in doc["steps"]:  # a slower link never makes the step faster
        t = step["modeled_s"]
        assert t["ideal"] <= t["1gbit@protocol-nanogpt"] <= t["1mbit:5ms"]
        assert t["1mbit:5ms"] > 6 * 0.005  # at least the latency of the 6 hops of one round trip
    assert "time-model/1mbit:5ms/step-time" in read_scalars(tb)


def _timed_real(rank, world, argv):
    tr = make_trainer(rank, world, argv)
    tr.train()
    return tr.ps.is_logging_rank


def test_a_real_run_prices_links_from_its_own_measurements(tmp_path):
    """The cross-check's path: a P-process run with --sim-links models its own step."""
    path = str(tmp_path / "real.json")
    argv = tiny_args(layers=2, gbs=8, mbs=2, extra=COMPRESSION + ["--train-iters", "4", "--log-interval", "2",
                                                                  "--sim-links", "10mbit", "--timing-json", path])
    run_ranks(_timed_real, 2, argv)
    doc = json.load(open(path))
    assert not doc["emulated"] and len(doc["steps"]) == 4
    assert all(s["modeled_s"]["10mbit"] > s["modeled_s"]["ideal"] > 0 for s in doc["steps"])


def test_two_nccl_ranks_on_one_gpu_fail_in_one_line_naming_the_flag(monkeypatch, capsys):
    """Before NCCL's 'Duplicate GPU detected' inside torchrun: one line, exit code 2."""
    from megaclap.training.pretrain import main
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    argv = tiny_args(layers=2, extra=["--pipeline-model-parallel-size", "2", "--distributed-backend", "nccl"])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 processes on this node but 1 CUDA device(s)" in err[0] and "--pp-emulate" in err[0]
