"""Megatron-LM's log lines (so users' parsers keep working) and TensorBoard scalars."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Optional


def flops_per_token(m, vocab: int) -> float:
    """Training FLOPs per token (DESIGN section 8, Megatron's formula; x3 for fwd + bwd)."""
    q = m.num_attention_heads * m.head_dim
    kv = m.query_groups * m.head_dim
    L, h = m.num_layers, m.hidden_size
    dense = L * h * m.ffn * (3 if m.swiglu else 2) + L * (h * (q + 2 * kv) + q * h) + h * vocab
    return 3 * 2 * dense + 6 * L * m.seq_length * q


def format_train_line(it: int, train_iters: int, consumed: int, ms_per_iter: float, tflops: float,
                      lr: float, gbs: int, loss: float, loss_scale: float, grad_norm: Optional[float],
                      skipped: int, nans: int, tokens_per_s: float, extra: str = "") -> str:
    """Megatron's training_log line; `grad norm` is left out when the last step was skipped
    (grad_norm None, as Megatron's optimizer returns for an fp16 overflow)."""
    norm = f" grad norm: {grad_norm:.3f} |" if grad_norm is not None else ""
    line = (f" {timestamp()} iteration {it:8d}/{train_iters:8d} | consumed samples: {consumed:12d} |"
            f" elapsed time per iteration (ms): {ms_per_iter:.1f} |"
            f" throughput per GPU (TFLOP/s/GPU): {tflops:.3f} | learning rate: {lr:.6E} |"
            f" global batch size: {gbs:5d} | lm loss: {loss:.6E} | loss scale: {loss_scale:.1f} |{norm}"
            f" number of skipped iterations: {skipped:3d} |"
            f" number of nan iterations: {nans:3d} | tokens per second: {tokens_per_s:.1f} |")
    return line + extra


def timestamp() -> str:
    """Megatron's log-line prefix: [YYYY-MM-DD HH:MM:SS.ffffff] (local time)."""
    return datetime.now().strftime("[%Y-%m-%d %H:%M:%S.%f]")


def format_validation_line(it: int, loss: float, split: str = "") -> str:
    """Megatron's evaluate_and_print_results line; split "validation set" / "test set" for the
    evaluations after training (`... loss at iteration N on test set | ...`)."""
    ppl = math.exp(min(20.0, loss))
    where = f"iteration {it}" + (f" on {split}" if split else "")
    return f" validation loss at {where} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E} | "


def validation_block(line: str) -> list:
    """The line between two rules of dashes one longer than it, as Megatron prints it."""
    return ["-" * (len(line) + 1), line, "-" * (len(line) + 1)]


class TensorBoard:
    """Megatron's scalar names, each also '... vs samples'. A no-op when no directory is given."""

    def __init__(self, log_dir: Optional[str]):
        self.writer = None
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=log_dir, max_queue=1000)

    def scalars(self, values: dict, iteration: int, samples: int, vs_samples: bool = True) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, iteration)
            if vs_samples:
                self.writer.add_scalar(f"{key} vs samples", value, samples)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
