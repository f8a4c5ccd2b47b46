"""Per-phase step timers (--timing-log-level, Megatron's flag name).

Level 0 (default): every `phase()` is a shared nullcontext: no clock reads, no device syncs.
Level 1: each step's time is split into the phases below, summed over a --log-interval and
reported per step (max over the pipeline stages) in the log line and TensorBoard:

    forward-compute    stage forward of every microbatch (loss included on the last stage)
    backward-compute   stage backward of every microbatch
    encode-decode      Channel encode (sender, phase "encode") and decode (receiver, "decode")
    p2p-wait           posting p2p groups and waiting for their receives (simulated link
                       delay and the tp all-gather of a split boundary included)
    dp-allreduce       gradient synchronisation across data-parallel (and embedding) groups
    grad-norm          fp16 unscale and overflow check, Channel commit/rollback, the global grad
                       norm and clipping: the step's synchronisation point of all model-parallel ranks
    optimizer          optimizer and LR schedule step

On CUDA a timed phase synchronises the device at its start and end (kernels are
asynchronous), which is why the timers are off unless asked for.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch

from megaclap.parallel.collectives import max_over_pp

PHASES = ("forward-compute", "backward-compute", "encode-decode", "p2p-wait", "dp-allreduce", "grad-norm",
          "optimizer")
ALIASES = {"encode": "encode-decode", "decode": "encode-decode"}  # finer names the time model reads
_OFF = nullcontext()


class Timers:
    """Accumulates seconds per phase since the last `gather()`."""

    def __init__(self, level: int = 0, device=None):
        self.level, self.device = int(level), torch.device(device or "cpu")
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._open = None  # the phase being timed: nested phases count only once, in the outer one

    def phase(self, name: str):
        if self.level <= 0 or self._open is not None:
            return _OFF
        return self._timed(name)

    @contextmanager
    def _timed(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        """Open phase `name` (a no-op at level 0 or inside another phase); close it with stop()."""
        if self.level <= 0 or self._open is not None:
            return
        self._sync()
        self._open, self._start = name, time.perf_counter()

    def stop(self, name: str) -> None:
        if self._open != name:
            return
        self._sync()
        key = ALIASES.get(name, name)
        if key in self.seconds:  # phases outside PHASES (e.g. "data") only feed the time model
            self.seconds[key] += time.perf_counter() - self._start
        self._open = None

    # --- hooks of the time model (megaclap.training.opclock.OpClock); nothing here ---------------
    def begin_step(self, fresh: bool, microbatches: int) -> None:
        """A training step starts."""

    def end_step(self) -> None:
        """The training step ends."""

    def sent(self, direction: str, nbytes: int) -> None:
        """The message just encoded has nbytes of payload."""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def gather(self, pstate) -> torch.Tensor:
        """Seconds per phase since the last call, max over the pp group (a pp-group collective
        when the level is > 0; every rank calls it). Resets the counters."""
        out = torch.tensor([self.seconds[p] for p in PHASES], dtype=torch.float64)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return max_over_pp(out, pstate)


def log_fields(arr: torch.Tensor, steps: int) -> str:
    return "".join(f" {p} (ms): {float(v) * 1e3 / max(1, steps):.1f} |" for p, v in zip(PHASES, arr))


def tb_scalars(arr: torch.Tensor, steps: int) -> dict:
    return {f"{p}-time": float(v) / max(1, steps) for p, v in zip(PHASES, arr)}
