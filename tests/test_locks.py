"""One writer per output (issue 23, item 6): two real writers at once, the first paused with
SIGSTOP while it writes (so the overlap is certain), the second refused in one line; the first
finishes with its own data. A killed owner leaves no stale lock; the ranks of one job share it."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from megaclap.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megaclap.locks import OutputInUse, lock_dir
from tests.dist import run_ranks
from tests.train_utils import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def _start(args: list, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)


def _pause_when(proc: subprocess.Popen, ready, timeout: float = 180) -> None:
    """SIGSTOP proc as soon as ready() holds (it keeps its files and its lock open)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < end, "the first writer ended before it was paused"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGSTOP)


def _resume_and_wait(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGCONT)
    return proc.wait(timeout=300)


def _error_lines(text: str) -> list:
    return [line for line in text.splitlines() if ": error: " in line]


def test_a_second_training_into_a_used_save_dir_is_refused_and_the_first_keeps_its_checkpoints(tmp_path):
    save = str(tmp_path / "ckpt")
    script = os.path.join(ROOT, "examples/pretrain_gpt/pretrain_gpt.py")
    common = ["--save", save, "--save-interval", "1", "--train-iters", "4", "--lr-decay-iters", "10",
              "--log-interval", "100", "--eval-iters", "0"]
    with open(tmp_path / "first.log", "w") as log:
        first = _start([script, *tiny_args(layers=2, extra=[*common, "--seed", "11"])], log)
        _pause_when(first, lambda: os.path.isfile(os.path.join(save, "latest_checkpointed_iteration.txt")))
        second = subprocess.run([sys.executable, script, *tiny_args(layers=2, extra=[*common, "--load", save,
                                                                                   "--seed", "22"])],
                                capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
        assert _resume_and_wait(first) == 0, open(tmp_path / "first.log").read()[-3000:]
    lines = _error_lines(second.stderr)
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert f"--save {save} is in use by another run (pid {first.pid}" in lines[0], lines[0]
    assert "Traceback" not in second.stderr + second.stdout
    for it in range(1, 5):  # every checkpoint is the first run's
        shard = torch.load(os.path.join(save, f"iter_{it:07d}", "mp_rank_00", "model_optim_rng.pt"), weights_only=False)
        assert shard["args"]["train"]["seed"] == 11, it
    assert not os.path.exists(os.path.join(save, ".megaclap.lock"))  # released at the end


def test_the_lock_of_a_killed_owner_does_not_outlive_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from megaclap.locks import lock_dir; lock_dir(sys.argv[1], '--save x'); "
        "print('held', flush=True); time.sleep(600)"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputInUse, match=f"in use by another run \\(pid {holder.pid} on"):
        lock_dir(str(tmp_path), "--save x")
    holder.kill()  # SIGKILL: no clean-up runs; the OS drops the flock
    holder.wait()
    assert os.path.exists(tmp_path / ".megaclap.lock")  # the file stays, unlocked
    lock = lock_dir(str(tmp_path), "--save x")
    lock.release()


def _claim_worker(rank, world, save):
    from megaclap.config import parse_args
    from megaclap.parallel.state import ParallelState
    from megaclap.training.preflight import claim_outputs
    cfg = parse_args(tiny_args(layers=2, extra=["--save", save])).validate(world)
    ps = ParallelState(1, 1, world, rank, torch.device("cpu"))
    out = claim_outputs(cfg, ps)
    holds = out.lock is not None
    torch.distributed.barrier()
    out.release()
    return {"tag": out.tag, "holds": holds}


def test_every_rank_of_one_job_passes_and_only_rank_0_holds_the_lock(tmp_path):
    res = run_ranks(_claim_worker, 2, str(tmp_path / "ckpt"))
    assert [r["holds"] for r in res] == [True, False]
    assert res[0]["tag"] and res[0]["tag"] == res[1]["tag"]  # one temporary name for the job


def _corpus_text(path, tag: str, docs: int) -> None:
    with open(path, "w") as f:
        for i in range(docs):
            f.write(json.dumps({"text": f"{tag} " + " ".join(str(5 + (i + j) % 80) for j in range(60))}) + "\n")


def test_a_second_preprocessing_run_into_a_prefix_being_written_is_refused(tmp_path, capsys):
    from tools import preprocess_data
    _corpus_text(tmp_path / "a.jsonl", "1", 30000)
    _corpus_text(tmp_path / "b.jsonl", "2", 50)
    out = str(tmp_path / "out")
    args = ["--json-keys", "text", "--tokenizer-type", "NullTokenizer", "--vocab-size", "96", "--output-prefix",
            out, "--log-interval", "0"]
    with open(tmp_path / "first.log", "w") as log:
        first = _start(["tools/preprocess_data.py", "--input", str(tmp_path / "a.jsonl"), *args], log)
        _pause_when(first, lambda: glob.glob(out + "_text_document.tmp-*"))
        assert preprocess_data.cli(["--input", str(tmp_path / "b.jsonl"), *args]) == 2
        assert _resume_and_wait(first) == 0, open(tmp_path / "first.log").read()[-3000:]
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"is in use by another run (pid {first.pid}" in lines[0], lines
    ds = IndexedDataset(out + "_text_document")
    assert ds.num_documents == 30000 and {int(ds.get(i, 0, 1)[0]) for i in range(len(ds))} == {1}


def test_a_second_merge_into_a_prefix_being_written_is_refused(tmp_path, capsys):
    from tools import merge_datasets
    (tmp_path / "shards").mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        b = IndexedDatasetBuilder(str(tmp_path / "shards" / f"s{k}.bin"), np.uint16)
        b.add_documents(rng.integers(0, 96, 4000 * 400), np.full(4000, 400))
        b.finalize(str(tmp_path / "shards" / f"s{k}.idx"))
    out = str(tmp_path / "merged")
    with open(tmp_path / "first.log", "w") as log:
        first = _start(["tools/merge_datasets.py", "--input", str(tmp_path / "shards"), "--output-prefix", out], log)
        _pause_when(first, lambda: glob.glob(out + ".tmp-*"))
        second = ["--input", str(tmp_path / "shards" / "s0"), "--output-prefix", out]
        assert merge_datasets.cli(second) == 2
        assert _resume_and_wait(first) == 0, open(tmp_path / "first.log").read()[-3000:]
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"is in use by another run (pid {first.pid}" in lines[0], lines
    assert IndexedDataset(out).num_documents == 6 * 4000
