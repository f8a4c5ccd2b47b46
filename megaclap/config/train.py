"""TrainConfig: batches, iterations, evaluation, logging, checkpoints and exits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class TrainConfig:
    """Batches, iterations, evaluation, logging and checkpoints."""

    micro_batch_size: int = field(default=4, metadata={"required": True})
    """--micro-batch-size: samples per microbatch per data-parallel rank."""
    global_batch_size: Optional[int] = None
    """--global-batch-size: samples per step over all dp ranks (default micro * dp)."""
    rampup_batch_size: Optional[List[int]] = field(default=None, metadata={"nargs": 3, "metavar": ("START", "INCR", "SAMPLES")})
    """--rampup-batch-size: global batch START, growing by INCR over SAMPLES samples to --global-batch-size."""
    step_batch_size_schedule: Optional[List[str]] = field(default=None, metadata={"nargs": "+", "metavar": "TOKENS:BATCH"})
    """--step-batch-size-schedule: global batch BATCH from TOKENS consumed tokens on, e.g. 0:16 2.4B:320 (one
    quoted string or several words)."""
    train_iters: Optional[int] = None
    """--train-iters: optimizer steps (this or --train-samples is required)."""
    train_samples: Optional[int] = None
    """--train-samples: train until this many samples are consumed (sample-based schedule)."""
    seed: int = 1234
    """--seed: weights, data order, dropout, codecs."""
    eval_interval: int = 1000
    """--eval-interval: validate every this many steps."""
    eval_iters: int = 10
    """--eval-iters: validation batches per evaluation."""
    full_validation: bool = False
    """--full-validation: every evaluation reads the whole validation split, the same samples in the
    same order each time (Megatron-LM's flag); --eval-iters then sizes only mock data's split
    (--eval-iters global batches). Whole global batches: the split's last < --global-batch-size
    samples are left out. Real data is read in file order, so every --seed sees the same tokens."""
    eval_interval_schedule: Optional[List[str]] = field(default=None,
                                                        metadata={"nargs": "+", "metavar": "STEP:INTERVAL"})
    """--eval-interval-schedule: validate every INTERVAL steps from step STEP on, e.g. 0:100 450:25
    (iterations 100, 200, 300, 400, 450, 475, ...); replaces --eval-interval."""
    log_interval: int = 10
    """--log-interval: steps between log lines."""
    tensorboard_dir: Optional[str] = None
    """--tensorboard-dir: TensorBoard event files (off when unset)."""
    save: Optional[str] = None
    """--save: checkpoint directory."""
    load: Optional[str] = None
    """--load: checkpoint directory to resume from."""
    save_interval: Optional[int] = field(default=None, metadata={"aliases": ("--persistent-save-interval",)})
    """--save-interval: steps between checkpoints."""
    finetune: bool = False
    """--finetune: load weights only and reset the iteration."""
    no_load_optim: bool = False
    """--no-load-optim: do not restore the optimizer."""
    no_load_rng: bool = False
    """--no-load-rng: do not restore RNG states."""
    exit_interval: Optional[int] = None
    """--exit-interval: stop (after saving) when iteration % this == 0."""
    overwrite_checkpoint: bool = False
    """--overwrite-checkpoint: allow --save into a directory whose tracker is at a later iteration (moves it back)."""
    verbose_errors: bool = False
    """--verbose-errors: print the traceback of a known error (corrupt data, bad checkpoint, full disk) too."""
    exit_duration_in_mins: Optional[float] = None
    """--exit-duration-in-mins: stop (after saving) once the run has lasted this long."""
    compile: bool = False
    """--compile: torch.compile each pipeline stage (off by default; eager where unsupported)."""
    timing_log_level: int = 0
    """--timing-log-level: 1 adds per-step phase times (forward, backward, encode+decode, p2p wait, dp all-reduce,
    grad norm, optimizer) to the log."""
    timing_json: Optional[str] = None
    """--timing-json: write this run's per-stage and per-message measurements and the modeled step time per
    --sim-links link (fresh and repeated steps apart) to this JSON file at every log interval."""

    def eval_due(self, iteration: int) -> bool:
        """Whether validation runs after `iteration` steps (--eval-interval-schedule or --eval-interval)."""
        start, interval = 0, self.eval_interval
        for step, every in parse_eval_schedule(self.eval_interval_schedule):
            if iteration >= step:
                start, interval = step, every
        return iteration > 0 and (iteration - start) % interval == 0


def parse_eval_schedule(items) -> list:
    """['0:100', '450:25'] -> [(0, 100), (450, 25)]; ValueError naming the flag on bad input."""
    out = []
    for item in items or []:
        try:
            step, every = (int(v) for v in str(item).split(":"))
        except ValueError:
            raise ValueError(f"--eval-interval-schedule {item!r}: expected STEP:INTERVAL, "
                             "e.g. 0:100 450:25") from None
        if step < 0 or every < 1 or (out and step <= out[-1][0]):
            shown = " ".join(map(str, items))
            raise ValueError(f"--eval-interval-schedule {shown}: steps must be >= 0 and increasing, "
                             "intervals >= 1")
        out.append((step, every))
    return out
