"""The global batch size as a function of consumed samples (Megatron's microbatch calculators).

    constant        --global-batch-size at every step
    ramp-up         --rampup-batch-size START INCR SAMPLES: START, then +INCR every
                    SAMPLES / ((GBS - START) / INCR) consumed samples, GBS once SAMPLES are consumed
    step schedule   --step-batch-size-schedule "TOKENS:BATCH ...": BATCH from TOKENS consumed
                    tokens on (thresholds in tokens, divided by --seq-length; K/M/B/T suffixes)

The batch depends only on consumed samples, so a resume continues the schedule exactly, whatever
the batch of the run that wrote the checkpoint.
"""
from __future__ import annotations

from typing import Optional

from .errors import check
from .units import parse_count


def parse_step_schedule(text, seq_length: int) -> list:
    """'0:16 2.4B:320' (or its words as a list) -> [(threshold in samples, batch), ...] sorted;
    ValueError names the flag."""
    text = text if isinstance(text, str) else " ".join(text)
    steps = []
    for entry in text.replace(",", " ").split():
        if ":" not in entry:
            raise ValueError(f"--step-batch-size-schedule entry {entry!r}: expected TOKENS:BATCH")
        tokens, batch = entry.split(":", 1)
        steps.append((parse_count(tokens) // seq_length, parse_count(batch)))
    steps.sort()
    if not steps or steps[0][0] != 0:
        raise ValueError(f"--step-batch-size-schedule {text!r}: the first entry must start at 0")
    if any(a[0] == b[0] for a, b in zip(steps, steps[1:])) or any(b < 1 for _, b in steps):
        raise ValueError(f"--step-batch-size-schedule {text!r}: thresholds must differ and batches be positive")
    return steps


class BatchSchedule:
    """Global batch size after `consumed` samples; every size a multiple of micro x dp."""

    def __init__(self, global_batch_size: int, unit: int, rampup: Optional[list] = None,
                 steps: Optional[list] = None):
        self.global_batch_size, self.unit = global_batch_size, unit
        self.rampup, self.steps = rampup, steps
        if rampup is not None:
            start, incr, samples = rampup
            check(start > 0 and incr > 0 and samples >= 0, "--rampup-batch-size START INCR SAMPLES must be positive")
            diff = global_batch_size - start
            check(diff >= 0 and diff % incr == 0, f"--global-batch-size {global_batch_size} minus the ramp-up start "
                  f"{start} must be a non-negative multiple of the increment {incr} (--rampup-batch-size)")
            self.per_increment = samples / (diff // incr) if diff else 0.0
        sizes = [b for _, b in steps] if steps else ([rampup[0], rampup[1]] if rampup else [])
        for b in sizes + [global_batch_size]:
            check(b % unit == 0, f"global batch size {b} (from the batch-size schedule) is not a multiple of "
                  f"--micro-batch-size x data-parallel size = {unit}")

    def at(self, consumed: int) -> int:
        if self.steps:
            return [b for threshold, b in self.steps if consumed >= threshold][-1]
        if self.rampup is None or consumed > self.rampup[2] or not self.per_increment:
            return self.global_batch_size
        start, incr, _ = self.rampup
        return min(self.global_batch_size, start + int(consumed / self.per_increment) * incr)

    def iterations_for(self, train_samples: int) -> int:
        """Steps to consume `train_samples` (Megatron's update_train_iters: whole steps)."""
        iters = consumed = 0
        while consumed < train_samples and (self.steps or self.rampup) and self.at(consumed) != self.global_batch_size:
            consumed += self.at(consumed)
            iters += 1
        return iters + max(0, train_samples - consumed) // self.global_batch_size

    def samples_for(self, iterations: int) -> int:
        """Samples consumed by `iterations` steps."""
        consumed = 0
        for _ in range(iterations):
            consumed += self.at(consumed)
        return consumed


def build_batch_schedule(train_cfg, seq_length: int, dp: int) -> BatchSchedule:
    t = train_cfg
    steps = parse_step_schedule(t.step_batch_size_schedule, seq_length) if t.step_batch_size_schedule else None
    return BatchSchedule(t.global_batch_size, t.micro_batch_size * dp, t.rampup_batch_size, steps)
