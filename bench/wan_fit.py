"""WAN speedrun analysis: steady-state step time from timing windows, and steps to a target
validation loss from noisy evaluation curves (the dense power-law fit plus each run's gap line).
Pure functions of the logged numbers; bench/wan_speedrun.py runs the cells and reports."""
from __future__ import annotations

import math
import statistics


def steady_step_time(times: list, fresh: list, p, warmup: int, window: int, weight_p="same") -> dict:
    """Steady-state seconds per step from per-step times (see the module docstring); fresh and
    repeated steps weighted by `weight_p` (default: the run's own p). A kind of step the run
    lacks (a run without lazy sampling has no repeats) takes the other kind's time."""
    out = {}
    for kind in ("fresh", "repeat"):
        ts = [t for t, f in zip(times[warmup:], fresh[warmup:]) if f == (kind == "fresh")]
        if not ts:
            continue
        wins = [statistics.mean(ts[i:i + window]) for i in range(0, len(ts) - window + 1, window)] or [statistics.mean(ts)]
        med = statistics.median(wins)
        agree = [w for w in wins if abs(w - med) <= 0.02 * med]
        out[kind] = {"s": statistics.median(agree or wins), "windows": wins, "agree": len(agree)}
    q = p if weight_p == "same" else weight_p
    t_fresh = out.get("fresh", out.get("repeat"))["s"]
    t_repeat = out.get("repeat", out.get("fresh"))["s"]
    total = t_fresh if q is None else q * t_fresh + (1 - q) * t_repeat
    return {"step_s": total, "stable": all(v["agree"] >= 2 for v in out.values()), **out}


def steps_to_target(curve, target: float):
    """First (interpolated) step at which the validation curve [[steps], [losses]] is <= target."""
    prev = (0, math.inf)
    for step, loss in zip(*curve):
        if loss <= target:
            if not math.isfinite(prev[1]):
                return float(step)
            return prev[0] + (step - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (step, loss)
    return None


def fit_power(curve) -> tuple:
    """Least-squares a + b * step^-c through a validation curve (c on a grid, a and b exact)."""
    import numpy as np
    x, y = np.asarray(curve[0], float), np.asarray(curve[1], float)
    best = None
    for c in np.linspace(0.05, 3.0, 120):
        basis = np.stack([np.ones_like(x), x ** -c], 1)
        coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
        sse = float(((basis @ coef - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(coef[0]), float(coef[1]), float(c))
    return best[1:]


def fit_gap(curve, dense, start: float) -> tuple:
    """Least-squares line (alpha, beta) through curve - dense at their common steps >= start."""
    import numpy as np
    ref = dict(zip(*dense))
    pts = [(s, v - ref[s]) for s, v in zip(*curve) if s in ref and s >= start]
    x, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    if len(pts) < 2:
        return (float(y.mean()) if len(pts) else 0.0, 0.0)
    beta, alpha = np.polyfit(x, y, 1)
    return float(alpha), float(beta)


def smooth_curve(curve, dense, start: float):
    """step -> dense fit + this run's gap fit (see the module docstring)."""
    a, b, c = fit_power(dense)
    alpha, beta = fit_gap(curve, dense, start)
    return lambda step: a + b * step ** -c + alpha + beta * step


def steps_to_target_smooth(fn, target: float, limit: float, resolution: float = 0.1):
    """First step in (0, limit] (on a grid of `resolution`) where fn(step) <= target, else None."""
    step = resolution
    while step <= limit:
        if fn(step) <= target:
            return step
        step += resolution
    return None


def loss_at(curve, step: float) -> float:
    """Validation loss at `step`, linearly interpolated between evaluation points."""
    steps, losses = curve
    for (s0, l0), (s1, l1) in zip(zip(steps, losses), zip(steps[1:], losses[1:])):
        if s0 <= step <= s1:
            return l0 + (l1 - l0) * (step - s0) / (s1 - s0)
    raise ValueError(f"no validation points around step {step} (evaluated at {steps})")
