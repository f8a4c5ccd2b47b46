"""WAN speedrun analysis: pure functions of logged numbers (bench/wan_speedrun.py runs and reports).

- Steps to target: the first evaluation at or below the target, interpolated linearly from the
  evaluation before it (evaluations read the same validation tokens each time, so points are
  not noise around a curve). A power-law fit's crossing is kept only as a diagnostic.
- Targets: the dense runs' validation loss at 95% of their decayed schedule and their final loss,
  each the highest over the dense seeds, so every dense seed reaches both within its schedule.
- Steady-state step time, Protocol NanoGPT's rule: consecutive windows of 10 steps; steady from
  the first 3 consecutive windows whose means agree within 1%; the step time is their mean.
  Fresh and lazily repeated steps are timed separately (they send different bytes).
- T: the sum, over the run's realised sequence of fresh and repeated steps up to the target,
  of each kind's steady step time (never p times one and 1 - p times the other).
"""
from __future__ import annotations

import math
import statistics


def steps_to_target(curve, target: float):
    """First (interpolated) step at which the validation curve [[steps], [losses]] is <= target;
    None when it never is. A first evaluation already at or below the target gives its step."""
    prev = None
    for step, loss in zip(*curve):
        if loss <= target:
            if prev is None:
                return float(step)
            return prev[0] + (step - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (step, loss)
    return None


def crossing_gap(curve, target: float):
    """Steps between the two evaluations that bracket the first crossing (0 when the first
    evaluation is already at or below the target; None when never): how far apart the points
    were that the interpolation joined."""
    prev = None
    for step, loss in zip(*curve):
        if loss <= target:
            return 0 if prev is None else step - prev
        prev = step
    return None


def loss_at(curve, step: float) -> float:
    """Validation loss at `step`, linearly interpolated between evaluation points."""
    steps, losses = curve
    for (s0, l0), (s1, l1) in zip(zip(steps, losses), zip(steps[1:], losses[1:])):
        if s0 <= step <= s1:
            return l0 + (l1 - l0) * (step - s0) / (s1 - s0)
    if steps and step == steps[-1]:
        return losses[-1]
    raise ValueError(f"no validation points around step {step} (evaluated at {steps})")


def targets(dense_curves: list, dense_iters: int, fraction: float) -> dict:
    """{"end": the dense loss at `fraction` of the schedule, "final": the dense final loss}, each
    the highest over the dense seeds: every dense seed reaches "end" by `fraction` of its decayed
    schedule and "final" by its last step (the mean would leave the worse half of them short)."""
    return {"end": max(loss_at(c, fraction * dense_iters) for c in dense_curves),
            "final": max(loss_at(c, dense_iters) for c in dense_curves)}


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


def fitted_steps_to_target(curve, target: float, limit: float):
    """Diagnostic only: where a + b * step^-c fitted to the curve crosses the target (<= limit)."""
    if len(curve[0]) < 3:
        return None
    a, b, c = fit_power(curve)
    if b <= 0 or target <= a:
        return None
    step = (b / (target - a)) ** (1 / c)
    return step if step <= limit else None


def steady_state(times: list, window: int = 10, count: int = 3, tol: float = 0.01) -> dict:
    """Steady-state seconds per step of one kind of step, Protocol NanoGPT's rule (module doc).
    {"s", "steady", "start" (first step of the steady windows), "windows" (their means)}; no
    steady stretch: the median window mean with steady False. None without a whole window."""
    means = [statistics.fmean(times[i:i + window]) for i in range(0, len(times) - window + 1, window)]
    if not means:
        return None
    for i in range(len(means) - count + 1):
        run = means[i:i + count]
        if max(run) <= (1 + tol) * min(run):
            return {"s": statistics.fmean(run), "steady": True, "start": i * window, "windows": means}
    return {"s": statistics.median(means), "steady": False, "start": None, "windows": means}


def kind_step_times(times: list, fresh: list, warmup: int = 0, **rule) -> dict:
    """{"fresh": steady_state(...), "repeat": ...} of a run's per-step times split by kind, the
    first `warmup` steps left out; a kind the run lacks (or too few steps of it) is None."""
    out = {}
    for kind, flag in (("fresh", True), ("repeat", False)):
        out[kind] = steady_state([t for t, f in zip(times[warmup:], fresh[warmup:]) if f == flag], **rule)
    return out


def time_to_target(fresh: list, steps: float, t_fresh: float, t_repeat) -> float:
    """Seconds to train `steps` (fractional) steps whose kinds are fresh[0], fresh[1], ...:
    each whole step costs its kind's time, the last partial step its fraction of it."""
    whole = int(math.floor(steps))
    if whole > len(fresh) or (whole == len(fresh) and steps > whole):
        raise ValueError(f"{steps} steps but the run's sequence has {len(fresh)}")

    def cost(f):
        if f or t_repeat is None:
            return t_fresh
        return t_repeat
    total = sum(cost(f) for f in fresh[:whole])
    if steps > whole:
        total += (steps - whole) * cost(fresh[whole])
    return total
