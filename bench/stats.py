"""Statistics over seeds for the benchmarks: mean and 95% interval (Student's t), and a verdict
that is given only where two intervals separate. Pure functions; no scipy (not a dependency)."""
from __future__ import annotations

import math
import statistics

# Two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30 (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """t_{0.975, df}; above 30 degrees of freedom 1.96 + 2.4 / df (within 0.002 of the table)."""
    if df < 1:
        raise ValueError(f"need at least 2 values for an interval (df = {df})")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values: list) -> dict:
    """{"mean", "lo", "hi", "n"}: the 95% interval of the mean over seeds, mean -+ t * sd / sqrt(n).
    One value has no interval (lo = hi = None); None values (a seed that never reached the
    target) make the whole result None: a mean over the seeds that got there would flatter it."""
    if not values or any(v is None for v in values):
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(values)}


def scale(interval: dict, factor: float) -> dict:
    """An interval times a positive constant (T's interval from steps' at one step time)."""
    if interval is None:
        return None
    return {k: (v * factor if v is not None and k != "n" else v) for k, v in interval.items()}


def verdict(candidate: dict, baseline: dict) -> str:
    """'pays' when the candidate's interval (a time: lower is better) lies wholly below the
    baseline's, 'does not pay' when wholly above, else 'unresolved' (overlapping intervals, a
    single seed, or a run that did not reach the target: 'not reached')."""
    if candidate is None:
        return "not reached"
    if baseline is None or None in (candidate["lo"], baseline["lo"]):
        return "unresolved"
    if candidate["hi"] < baseline["lo"]:
        return "pays"
    if candidate["lo"] > baseline["hi"]:
        return "does not pay"
    return "unresolved"
