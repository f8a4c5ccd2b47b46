"""Summarise a megaclap training log (Megatron-style lines): losses, tokens/s, pipeline bytes.

    python examples/pretrain_gpt/summarize_log.py runs/quickstart/train_full.log

The last line is `quickstart: first loss X final loss Y`; the exit status is 1 when the
final training loss is not below the first (or the log has no training lines).
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from typing import Optional

NUM = r"([-+0-9.eEinfa]+)"
TRAIN_RE = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*?\| lm loss: " + NUM + r" \|")
FIELD_RE = {
    "tokens_s": re.compile(r"tokens per second: " + NUM),
    "fwd_ratio": re.compile(r"pp fwd ratio: " + NUM),
    "bwd_ratio": re.compile(r"pp bwd ratio: " + NUM),
    "sent": re.compile(r"pp bytes sent: " + NUM),
    "raw": re.compile(r"pp raw bytes: " + NUM),
}
VALID_RE = re.compile(r"validation loss at iteration (\d+) \| lm loss value: " + NUM)


@dataclass
class LogSummary:
    iterations: list        # iteration of each training log line
    losses: list            # mean lm loss over each log interval
    tokens_per_s: list
    valid: list             # (iteration, loss)
    bytes_sent: float       # pipeline payload bytes over the logged intervals, all boundaries
    bytes_raw: float        # what the same traffic would have been uncompressed

    @property
    def first_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def _field(name: str, line: str) -> Optional[float]:
    m = FIELD_RE[name].search(line)
    return float(m.group(1)) if m else None


def raw_bytes(line: str, sent: float) -> float:
    """Uncompressed bytes of one interval: the logged `pp raw bytes` when present, else from
    the ratios (activations and their gradients have the same shape and wire dtype, so the
    raw bytes are equal in both directions: raw = 2 * sent / (fwd ratio + bwd ratio))."""
    raw = _field("raw", line)
    if raw is not None:
        return raw
    fr, br = _field("fwd_ratio", line), _field("bwd_ratio", line)
    return 2.0 * sent / (fr + br) if fr is not None and br and fr + br > 0 else sent


def parse_log(text: str) -> LogSummary:
    s = LogSummary([], [], [], [], 0.0, 0.0)
    for line in text.splitlines():
        m = TRAIN_RE.search(line)
        if m:
            s.iterations.append(int(m.group(1)))
            s.losses.append(float(m.group(3)))
            tok = _field("tokens_s", line)
            if tok is not None:
                s.tokens_per_s.append(tok)
            sent = _field("sent", line)
            if sent is not None:
                s.bytes_sent += sent
                s.bytes_raw += raw_bytes(line, sent)
            continue
        m = VALID_RE.search(line)
        if m:
            s.valid.append((int(m.group(1)), float(m.group(2))))
    return s


def _bytes(n: float, unit: float) -> str:
    return f"{n / unit:.3f} GB" if unit == 1e9 else f"{n / unit:.1f} MB"


def summary_lines(s: LogSummary) -> list:
    # the first interval includes start-up costs; leave it out of the speed when possible
    speeds = s.tokens_per_s[1:] or s.tokens_per_s
    lines = [f"  iterations        {s.iterations[-1]}",
             f"  train loss        {s.first_loss:.4f} -> {s.final_loss:.4f} "
             f"(first and last log interval)"]
    if s.valid:
        it, loss = s.valid[-1]
        lines.append(f"  validation loss   {loss:.4f} (iteration {it})")
    if speeds:
        lines.append(f"  tokens/s          {statistics.mean(speeds):.0f} (mean over log intervals)")
    if s.bytes_raw > 0:
        saved, unit = s.bytes_raw - s.bytes_sent, 1e9 if s.bytes_raw >= 1e9 else 1e6
        lines.append(f"  pipeline p2p      sent {_bytes(s.bytes_sent, unit)} of "
                     f"{_bytes(s.bytes_raw, unit)} raw: ratio {s.bytes_sent / s.bytes_raw:.3f}, "
                     f"{_bytes(saved, unit)} saved ({100 * saved / s.bytes_raw:.0f}%)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="training log (stdout of pretrain_gpt.py)")
    parser.add_argument("--tensorboard-dir", default=None, help="printed as a tensorboard command")
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        s = parse_log(f.read())
    if not s.losses:
        print(f"quickstart: no training log lines in {args.log}", file=sys.stderr)
        return 1
    print(f"quickstart summary ({args.log})")
    print("\n".join(summary_lines(s)))
    if args.tensorboard_dir:
        print(f"  TensorBoard:      tensorboard --logdir {args.tensorboard_dir}")
    print(f"quickstart: first loss {s.first_loss:.4f} final loss {s.final_loss:.4f}")
    return 0 if s.final_loss < s.first_loss else 1


if __name__ == "__main__":
    sys.exit(main())
