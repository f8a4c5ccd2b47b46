"""Values with units on the command line: link rates, delays and large counts.

    bandwidth   tc's units: bit, kbit, mbit, gbit are bits/s; bps, kbps, mbps, gbps are bytes/s;
                a bare number is bits/s                      '200mbit' -> 2e8
    latency     s, ms, us; a bare number is seconds          '50ms' -> 0.05
    count       K, M, B, T suffixes (powers of 1000)         '2.4B' -> 2_400_000_000
"""
from __future__ import annotations

import re

from .errors import ConfigError

BANDWIDTH_UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
                   "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
LATENCY_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
COUNT_SUFFIXES = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}
_NUMBER_AND_UNIT = r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)"


def parse_bandwidth(text, flag: str = "--sim-link-bandwidth") -> float:
    """'200mbit' -> 2e8 bits/s; a bare number is bits/s. ConfigError names the flag."""
    m = re.fullmatch(_NUMBER_AND_UNIT, str(text).strip().lower())
    if not m or m.group(2) not in BANDWIDTH_UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"{flag} {text!r}: expected a positive rate such as 200mbit, 1gbit, 500kbit "
                         "or bits/s")
    return float(m.group(1)) * BANDWIDTH_UNITS[m.group(2)]


def parse_latency(text, flag: str = "--sim-link-latency") -> float:
    """'50ms' -> 0.05 s; '0.05s' and a bare number are seconds. ConfigError names the flag."""
    m = re.fullmatch(_NUMBER_AND_UNIT, str(text).strip().lower())
    if not m or m.group(2) not in LATENCY_UNITS:
        raise ConfigError(f"{flag} {text!r}: expected a non-negative delay such as 50ms, 0.05s or seconds")
    return float(m.group(1)) * LATENCY_UNITS[m.group(2)]


def parse_count(text: str) -> int:
    """'2.4B' -> 2400000000, '16' -> 16 (K/M/B/T suffixes, any case); ValueError if not a number."""
    text = text.strip().upper()
    scale = COUNT_SUFFIXES.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)
