"""Summarise a megaclap training log (Megatron-style lines): losses, tokens/s, pipeline bytes.

    python examples/pretrain_gpt/summarize_log.py runs/quickstart/train_full.log

It also prices the run's measured pipeline bytes per step on a WAN link (default 200 Mbit/s +
50 ms, Protocol NanoGPT's) with the simulated links' wire-time model, bytes * 8 / bandwidth +
latency per message, against the same run's dense (uncompressed) bytes.

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
WORLD_RE = re.compile(r"pp (\d+), device \w+, (\d+) microbatches per step")
VALID_RE = re.compile(r"validation loss at iteration (\d+) \| lm loss value: " + NUM)


@dataclass
class LogSummary:
    iterations: list        # iteration of each training log line
    losses: list            # mean lm loss over each log interval
    tokens_per_s: list
    valid: list             # (iteration, loss)
    bytes_sent: float       # pipeline payload bytes over the logged intervals, all boundaries
    bytes_raw: float        # what the same traffic would have been uncompressed
    pp: int = 0             # pipeline stages and microbatches per step (from the start-up line)
    microbatches: int = 0

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
        m = WORLD_RE.search(line)
        if m:
            s.pp, s.microbatches = int(m.group(1)), int(m.group(2))
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


def wan_lines(s: LogSummary, mbit: float, latency_ms: float) -> list:
    """Wire time per step of this run's measured bytes vs dense on one link (per-message model)."""
    steps = s.iterations[-1] if s.iterations else 0
    if not steps or s.bytes_raw <= 0 or s.pp < 2:
        return []
    messages = 2 * s.microbatches * (s.pp - 1)  # activations forward + gradients backward
    wire = [b / steps * 8 / (mbit * 1e6) + messages * latency_ms / 1e3 for b in (s.bytes_sent, s.bytes_raw)]
    return [f"  on {mbit:g} Mbit/s + {latency_ms:g} ms  {s.bytes_sent / steps / 1e6:.2f} MB/step -> wire "
            f"{wire[0]:.3f} s/step vs dense {s.bytes_raw / steps / 1e6:.2f} MB -> {wire[1]:.3f} s/step "
            f"({wire[1] / wire[0]:.2f}x less wire time; bytes*8/bw + latency per message, "
            f"{messages} messages/step)"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="training log (stdout of pretrain_gpt.py)")
    parser.add_argument("--tensorboard-dir", default=None, help="printed as a tensorboard command")
    parser.add_argument("--wan-mbit", type=float, default=200.0, help="link bandwidth to price bytes on [200]")
    parser.add_argument("--wan-latency-ms", type=float, default=50.0, help="link latency per message [50]")
    args = parser.parse_args(argv)
    with open(args.log, encoding="utf-8", errors="replace") as f:
        s = parse_log(f.read())
    if not s.losses:
        print(f"quickstart: no training log lines in {args.log}", file=sys.stderr)
        return 1
    print(f"quickstart summary ({args.log})")
    print("\n".join(summary_lines(s) + wan_lines(s, args.wan_mbit, args.wan_latency_ms)))
    if args.tensorboard_dir:
        print(f"  TensorBoard:      tensorboard --logdir {args.tensorboard_dir}")
    print(f"quickstart: first loss {s.first_loss:.4f} final loss {s.final_loss:.4f}")
    return 0 if s.final_loss < s.first_loss else 1


if __name__ == "__main__":
    sys.exit(main())
