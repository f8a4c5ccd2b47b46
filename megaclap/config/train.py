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
    """--timing-log-level: 1 adds per-step phase times (forward, backward, encode+decode, p2p wait, dp all-reduce, optimizer) to the log."""

