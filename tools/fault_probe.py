"""Fault probe (reliability issue 23): run every bad input and fault the issue names against a
source tree, through the real command lines, and classify what the user sees.

    python tools/fault_probe.py                      # this tree
    python tools/fault_probe.py --tree /work/main    # another checkout (before/after figures)
    python tools/fault_probe.py --only merge peer --json bench/results/fault_probe.json

Each case builds its inputs in a temporary directory and runs the training entry point or a
tool as a subprocess (PYTHONPATH = the tree), with real faults: two real writers at once (the
first one paused with SIGSTOP while it writes, so the overlap is certain), a real full disk (a
small tmpfs, root only), real SIGKILL / SIGSTOP of one rank of a 2-rank job. Outcomes:

    one-line    exit code 2, exactly one `...: error: ...` line naming the case's problem,
                no traceback                                         (good)
    handled     the run did the right thing (a warning line, a note, a correct result) (good)
    misleading  one line, but naming another problem, arriving after training started, or
                stopping the wrong one of two runs
    silent      exit code 0 where an error or a warning was due
    traceback   a Python traceback reached the user
    data loss   data that was good before the fault is unusable or wrong after it
    hang        did not end within the case's limit
    unclear     anything else (another exit code without a traceback)
    skipped     the case needs root (tmpfs mounts)
    probe-error the probe itself could not set the case up (said, never hidden)

Exit code 0 only when every case is one-line or handled. The JSON has every row and the counts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, ROOT)

GOOD = ("one-line", "handled")
ERROR_LINE = re.compile(r"^(megaclap: (configuration )?error|[\w.-]+: error): ")


class Probe:
    """Runs commands against one tree in one scratch directory; shared fixtures are cached."""

    def __init__(self, tree: str, scratch: str):
        self.tree, self.scratch, self._cache = os.path.abspath(tree), scratch, {}

    # --- running ----------------------------------------------------------------------------------
    def env(self, **extra) -> dict:
        return dict(os.environ, PYTHONPATH=self.tree, OMP_NUM_THREADS="1", **extra)

    def cmd(self, script: str, *args) -> list:
        return [sys.executable, os.path.join(self.tree, script), *map(str, args)]

    def run(self, script: str, *args, timeout: float = 300, env=None) -> dict:
        """Run a script of the tree to the end: {rc, out, timed_out, seconds}."""
        start = time.monotonic()
        try:
            p = subprocess.run(self.cmd(script, *args), capture_output=True, text=True, timeout=timeout,
                               cwd=self.scratch, env=env or self.env())
            return {"rc": p.returncode, "out": p.stdout + p.stderr, "timed_out": False,
                    "seconds": time.monotonic() - start}
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
            return {"rc": None, "out": out, "timed_out": True, "seconds": timeout}

    def start(self, script: str, *args, env=None) -> subprocess.Popen:
        """Start a script in the background; its output goes to a file (no pipe to fill)."""
        log = tempfile.NamedTemporaryFile("w+", dir=self.scratch, suffix=".log", delete=False)
        proc = subprocess.Popen(self.cmd(script, *args), stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.scratch, env=env or self.env(), text=True)
        proc.log_path = log.name
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        with open(proc.log_path) as f:
            return {"rc": None if timed_out else proc.returncode, "out": f.read(), "timed_out": timed_out}

    def job(self, world: int, args: list) -> list:
        """Start a `world`-rank training job (plain env:// rendezvous, one process per rank)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [self.start("examples/pretrain_gpt/pretrain_gpt.py", *args, env=self.env(
            RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))) for r in range(world)]

    def train(self, *args, timeout: float = 300) -> dict:
        return self.run("examples/pretrain_gpt/pretrain_gpt.py", *args, timeout=timeout)

    # --- fixtures ---------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.scratch, name)

    def cached(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def tiny(*extra, iters: int = 3, data: str = None) -> list:
    """A tiny GPT run (mock data unless a --data-path prefix is given)."""
    argv = ["--num-layers", 2, "--hidden-size", 32, "--num-attention-heads", 4, "--seq-length", 16,
            "--max-position-embeddings", 16, "--vocab-size", 96, "--make-vocab-size-divisible-by", 8,
            "--micro-batch-size", 2, "--global-batch-size", 8, "--train-iters", iters, "--lr", "1e-3",
            "--lr-decay-iters", 20,
            "--use-cpu-initialization", "--eval-iters", 0, "--log-interval", 1, "--seed", 3]
    argv += ["--data-path", data, "--split", "90,10,0"] if data else ["--mock-data"]
    return [str(a) for a in argv + list(extra)]


def write_corpus(prefix: str, docs: int = 64, seed: int = 0, length: int = 40, dtype=np.uint16) -> str:
    from megaclap.data.indexed_dataset import IndexedDatasetBuilder
    b = IndexedDatasetBuilder(prefix + ".bin", dtype)
    rng = np.random.default_rng(seed)
    for _ in range(docs):
        b.add_document(rng.integers(0, 96, length))
    b.finalize(prefix + ".idx")
    return prefix


def verdict(res: dict, want: str = None) -> str:
    """The outcome of one finished command that should have been refused with one line."""
    if res["timed_out"]:
        return "hang"
    text = res["out"]
    if "Traceback (most recent call last)" in text:
        return "traceback"
    lines = [line for line in text.splitlines() if ERROR_LINE.match(line)]
    if res["rc"] == 0:
        return "silent"
    if res["rc"] == 2 and len(lines) == 1:
        if want and not re.search(want, lines[0], re.IGNORECASE):
            return "misleading"
        return "one-line"
    return "unclear"


def error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if ERROR_LINE.match(line)]
    return lines[0] if lines else text.strip().splitlines()[-1] if text.strip() else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--tree", default=ROOT, help="source tree to probe (default: this one)")
    p.add_argument("--only", nargs="+", default=None, help="run the cases whose name contains any word")
    p.add_argument("--json", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    from tools.fault_probe_cases import CASES
    import tools.fault_probe_faults  # noqa: F401  (registers item 10's cases)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fault-probe-") as scratch:
        probe = Probe(args.tree, scratch)
        for item, name, fn in CASES:
            if args.only and not any(w in name for w in args.only):
                continue
            os.makedirs(probe.path(name))
            start = time.monotonic()
            try:
                outcome, detail = fn(probe, probe.path(name))
            except Exception as e:  # the probe itself failed: say so, never hide it
                outcome, detail = "probe-error", f"{type(e).__name__}: {e}"
            rows.append({"item": item, "case": name, "outcome": outcome, "detail": detail,
                         "seconds": round(time.monotonic() - start, 1)})
            print(f"{item:>3} {name:42s} {outcome:11s} {rows[-1]['seconds']:6.1f}s  {detail[:200]}", flush=True)
    counts = {o: sum(r["outcome"] == o for r in rows) for o in dict.fromkeys(r["outcome"] for r in rows)}
    good = sum(r["outcome"] in GOOD for r in rows)
    print(f"\n{len(rows)} cases on {args.tree}: " + ", ".join(f"{n} {o}" for o, n in counts.items())
          + f"; good (one-line or handled): {good}/{len(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tree": args.tree, "counts": counts, "rows": rows}, f, indent=1)
    return 0 if good == len(rows) else 1


def stop(proc) -> None:
    """SIGSTOP a running process (it keeps its files and locks open, as a slow writer does)."""
    os.kill(proc.pid, signal.SIGSTOP)


def resume(proc) -> None:
    os.kill(proc.pid, signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
