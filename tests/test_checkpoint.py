"""Checkpoints: exact resume (TP2xPP2, compression, lazy sampling), atomic saves, layout checks,
and fault tolerance under torchrun --max-restarts."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from megaclap.training.checkpointing import CheckpointError, read_tracker
from tests.dist import run_ranks
from tests.train_utils import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPRESS = ["--pp-compression-method", "clapping-fu", "--pp-fwd-codec", "topk:0.1", "--pp-bwd-codec", "quant:8",
            "--lazy-sampling-prob", "0.5", "--log-interval", "100", "--eval-interval", "3"]


def _run_worker(rank, world, argv, fail_on=None):
    from megaclap.config import parse_args
    from megaclap.parallel.state import ParallelState
    from megaclap.training import checkpointing
    from megaclap.training.pretrain import run
    if fail_on is not None and rank == fail_on[0]:
        real_save = torch.save

        def failing_save(obj, path, *a, **k):
            if fail_on[1] in str(path):
                raise RuntimeError("injected crash between shard writes")
            return real_save(obj, path, *a, **k)
        checkpointing.torch.save = failing_save
    cfg = parse_args(argv).validate(world)
    p = cfg.parallel
    ps = ParallelState(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, world, rank, torch.device("cpu"))
    tr = run(cfg, ps, print_fn=lambda s: None)
    return {"history": tr.history, "last": ps.is_last_stage and ps.tp_rank == 0 and ps.dp_rank == 0}


def _losses(results):
    return [loss for _, loss in [r for r in results if r["last"]][0]["history"]]


@pytest.mark.parametrize("extra", [[], COMPRESS], ids=["plain", "clapping-fu-lazy"])
def test_resume_is_bit_exact_tp2pp2(tmp_path, extra):
    layout = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"] + extra
    straight = _losses(run_ranks(_run_worker, 4, tiny_args(extra=layout + ["--train-iters", "6"])))
    ckpt = str(tmp_path / "ckpt")
    first = _losses(run_ranks(_run_worker, 4, tiny_args(extra=layout + ["--train-iters", "6", "--exit-interval", "3",
                                                                       "--save", ckpt])))
    assert read_tracker(ckpt) == 3
    second = _losses(run_ranks(_run_worker, 4, tiny_args(extra=layout + ["--train-iters", "6", "--load", ckpt])))
    assert first + second == straight  # bit for bit


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(extra=["--pipeline-model-parallel-size", "2", "--train-iters", "4", "--save", ckpt,
                            "--save-interval", "2", "--distributed-timeout-minutes", "0.2"])
    out = run_ranks(_run_worker, 2, argv, (1, "iter_0000004"), allow_errors=True)
    assert any(isinstance(r, str) and "injected crash" in r for r in out)
    assert read_tracker(ckpt) == 2
    assert not os.path.exists(os.path.join(ckpt, "iter_0000004"))
    resumed = run_ranks(_run_worker, 2, tiny_args(extra=["--pipeline-model-parallel-size", "2",
                                                          "--train-iters", "4", "--load", ckpt]))
    assert [it for it, _ in [r for r in resumed if r["last"]][0]["history"]] == [3, 4]


def test_layout_mismatch_names_reshard_tool(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    run_ranks(_run_worker, 2, tiny_args(extra=["--pipeline-model-parallel-size", "2", "--train-iters", "1",
                                               "--save", ckpt]))
    with pytest.raises(RuntimeError, match="tools/checkpoint/reshard.py"):
        run_ranks(_run_worker, 1, tiny_args(extra=["--train-iters", "2", "--load", ckpt]))


def test_tracker_pointing_at_missing_directory(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(CheckpointError, match="iter_0000007 is missing"):
        read_tracker(str(tmp_path))


def _torchrun(argv, log, extra_env=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
           os.path.join(ROOT, "examples/pretrain_gpt/pretrain_gpt.py")] + argv
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def _final_loss(text, iters):
    found = re.findall(rf"iteration +{iters}/ +{iters} \|.*?lm loss: (\S+) \|", text)
    assert found, text[-3000:]
    return found[-1]


def _workers(parent_pid):
    """The worker processes of this torchrun (its children), never anybody else's."""
    out = subprocess.run(["pgrep", "-P", str(parent_pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_killed_rank_restarts_and_finishes_with_same_loss(tmp_path):
    iters = 60
    base = tiny_args(extra=["--pipeline-model-parallel-size", "2", "--train-iters", str(iters),
                            "--log-interval", "1", "--eval-interval", "1000"])
    with open(tmp_path / "straight.log", "w") as log:
        assert _torchrun(base, log).wait(timeout=300) == 0
    ckpt = str(tmp_path / "ckpt")
    with open(tmp_path / "faulty.log", "w") as log:
        proc = _torchrun(base + ["--save", ckpt, "--load", ckpt, "--save-interval", "5"], log)
        deadline = time.time() + 120
        while (read_tracker(ckpt) if os.path.exists(os.path.join(ckpt, "latest_checkpointed_iteration.txt"))
               else None) is None and time.time() < deadline:
            time.sleep(0.05)
        victims = _workers(proc.pid)
        assert victims, "no worker to kill"
        os.kill(max(victims), signal.SIGKILL)
        assert proc.wait(timeout=300) == 0
    faulty = (tmp_path / "faulty.log").read_text()
    assert "loaded checkpoint" in faulty
    assert _final_loss(faulty, iters) == _final_loss((tmp_path / "straight.log").read_text(), iters)


# --- crash-safe re-save (format.commit) and tracker-ahead refusal ----------------------------------
def _trained(argv, steps=2):
    from tests.train_utils import make_trainer
    tr = make_trainer(0, 1, argv)
    for _ in range(steps):
        tr.train_step(tr.data.train.next_batch())
    return tr


def _weights(tr):
    return {k: v.clone() for k, v in tr.stage.state_dict().items()}


@pytest.mark.parametrize("crash", ["between the renames", "before the tracker"])
def test_resave_interrupted_keeps_a_complete_checkpoint(tmp_path, monkeypatch, crash):
    from megaclap.checkpoint import format as fmt
    from megaclap.training.checkpointing import Checkpointer
    ckpt = str(tmp_path / "ckpt")
    argv = tiny_args(layers=2, extra=["--save", ckpt, "--load", ckpt])
    tr = _trained(argv)
    Checkpointer(tr.cfg, tr.ps).save(tr)
    old = _weights(tr)
    with torch.no_grad():
        for p in tr.stage.parameters():
            p.add_(1.0)
    new = _weights(tr)
    renames = []

    def rename(src, dst):
        renames.append(dst)
        if crash == "between the renames" and len(renames) == 2:
            raise KeyboardInterrupt("killed between the renames")
        os.replace(src, dst)

    def tracker(root, it):
        raise KeyboardInterrupt("killed before the tracker")
    monkeypatch.setattr(fmt, "_rename", rename)
    if crash == "before the tracker":
        monkeypatch.setattr(fmt, "write_tracker", tracker)
    with pytest.raises(KeyboardInterrupt):
        Checkpointer(tr.cfg, tr.ps).save(tr)
    monkeypatch.undo()
    if crash == "between the renames":  # iter_0000002 is aside: the reader says where it is
        with pytest.raises(CheckpointError, match=r"iter_0000002\.old holds it"):
            read_tracker(ckpt)
    fresh = _trained(argv, steps=0)
    notes = []
    ck = Checkpointer(fresh.cfg, fresh.ps, print_fn=notes.append)
    assert ck.load(fresh) == 2
    expected = old if crash == "between the renames" else new
    for k, v in _weights(fresh).items():
        assert torch.equal(v, expected[k]), k
    assert any(("restored" if crash == "between the renames" else "removed") in n for n in notes), notes
    assert sorted(os.listdir(ckpt)) == ["iter_0000002", "iter_0000002.tmp", "latest_checkpointed_iteration.txt"] \
        if crash == "between the renames" else ["iter_0000002", "latest_checkpointed_iteration.txt"]


def test_new_run_into_a_later_runs_directory_is_refused(tmp_path):
    from megaclap.training.checkpointing import Checkpointer
    ckpt = str(tmp_path / "ckpt")
    tr = _trained(tiny_args(layers=2, extra=["--save", ckpt]), steps=3)
    Checkpointer(tr.cfg, tr.ps).save(tr)
    again = _trained(tiny_args(layers=2, extra=["--save", ckpt]), steps=0)
    with pytest.raises(CheckpointError, match="already holds iteration 3.*--overwrite-checkpoint"):
        Checkpointer(again.cfg, again.ps).load(again)
    again.iteration = 1  # the save itself refuses too (one check in format.commit)
    with pytest.raises(CheckpointError, match="--overwrite-checkpoint"):
        Checkpointer(again.cfg, again.ps).save(again)
    assert read_tracker(ckpt) == 3 and not os.path.exists(os.path.join(ckpt, "iter_0000001"))
    forced = _trained(tiny_args(layers=2, extra=["--save", ckpt, "--overwrite-checkpoint"]), steps=1)
    ck = Checkpointer(forced.cfg, forced.ps)
    ck.load(forced)
    ck.save(forced)
    assert read_tracker(ckpt) == 1
