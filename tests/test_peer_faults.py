"""A rank of a running job dies (SIGKILL) or stops (SIGSTOP): the survivor ends with one line
naming the peer and --distributed-timeout-minutes, exit code 2, no traceback (issue 23, item 10).
Real processes: a 2-rank pp=2 job through the training entry point (env:// rendezvous)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.dist import free_port
from tests.train_utils import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job(tmp_path) -> list:
    port = free_port()
    argv = tiny_args(layers=2, extra=["--pipeline-model-parallel-size", "2", "--train-iters", "100000",
                                      "--log-interval", "1", "--eval-iters", "0", "--distributed-timeout-minutes",
                                      "0.1"])
    procs = []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "examples/pretrain_gpt/pretrain_gpt.py"),
                                       *argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return procs


@pytest.mark.parametrize("victim,sig", [(0, signal.SIGKILL), (1, signal.SIGSTOP)],
                         ids=["rank 0 (the store's host) killed", "rank 1 stopped"])
def test_the_survivor_of_a_dead_or_stuck_peer_ends_with_one_line(tmp_path, victim, sig):
    procs = _job(tmp_path)
    try:
        end = time.monotonic() + 240
        while "iteration        2/" not in (tmp_path / "rank1.log").read_text():  # the job is training
            assert time.monotonic() < end and all(p.poll() is None for p in procs), \
                (tmp_path / "rank1.log").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(procs[victim].pid, sig)
        survivor = procs[1 - victim]
        assert survivor.wait(timeout=120) == 2
    finally:
        for p in procs:
            p.kill()
            p.wait()
    text = (tmp_path / f"rank{1 - victim}.log").read_text()
    lines = [line for line in text.splitlines() if line.startswith("megaclap: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    # the pipeline's own timeout names the peer rank; a collective's failure cannot, and says so
    assert f"rank {victim}" in lines[0] or "a peer process of this job died" in lines[0], lines[0]
    assert "--distributed-timeout-minutes" in lines[0], lines[0]
