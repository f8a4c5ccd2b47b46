"""bench/wan_speedrun.py: the measuring rules (steady state, steps to target) and a --quick run."""
import json
import math

import pytest

from bench import wan_fit as wf
from bench import wan_speedrun as ws
from tools.ablate_data import load_example


def test_steady_step_time_weights_fresh_and_repeated_steps_by_p():
    """Fresh steps 1.0 s, repeated 0.2 s, warm-up steps slow: p=0.25 gives 0.25 + 0.15."""
    fresh = [True, False, True, False, True, True, True, True, True, True, False, False, False, False, False, False]
    times = [9.0, 9.0] + [1.0 if f else 0.2 for f in fresh[2:]]
    st = wf.steady_step_time(times, fresh, 0.25, warmup=2, window=3)
    assert st["step_s"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.2)
    assert st["stable"] and st["fresh"]["s"] == 1.0 and st["repeat"]["s"] == 0.2
    # the same run's times serve another p; a run without repeats serves a lazy configuration
    assert wf.steady_step_time(times, fresh, 0.25, 2, 3, weight_p=0.5)["step_s"] == pytest.approx(0.6)
    assert wf.steady_step_time([0.5] * 9, [True] * 9, None, 3, 3, weight_p=0.5)["step_s"] == pytest.approx(0.5)


def test_steady_step_time_keeps_only_windows_that_agree():
    """One slow window (a hiccup) among agreeing ones is left out, and a run whose windows all
    disagree is flagged unstable."""
    times = [1.0] * 3 + [1.0, 1.01, 0.99, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    st = wf.steady_step_time(times, [True] * len(times), None, warmup=3, window=3)
    assert st["step_s"] == pytest.approx(1.0) and st["stable"]
    wild = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert not wf.steady_step_time(wild, [True] * 6, None, warmup=0, window=1)["stable"]


def test_steps_to_target_interpolates_and_says_when_never_reached():
    curve = [[10, 20, 30, 40], [6.0, 5.0, 4.0, 3.5]]
    assert wf.steps_to_target(curve, 4.5) == pytest.approx(25.0)
    assert wf.steps_to_target(curve, 6.5) == pytest.approx(10.0)
    assert wf.steps_to_target(curve, 3.0) is None
    assert wf.loss_at(curve, 35) == pytest.approx(3.75)


def test_smoothed_steps_to_target_cancels_shared_evaluation_noise():
    """Two runs read the same noisy validation batches; the slower one's curve is the faster
    one's at 0.8x the steps. Raw first crossings jump with the noise; the paired fit recovers
    the true steps to target (100 for dense, 125 for the slow run) within a few steps."""
    import numpy as np
    steps = list(range(10, 321, 10))
    law = lambda s: 5.0 + 20.0 * s ** -0.5  # noqa: E731
    noise = np.random.default_rng(0).normal(0, 0.08, len(steps))  # shared: same batches
    dense = [steps, [law(s) + e for s, e in zip(steps, noise)]]
    slow = [steps, [law(0.8 * s) + e for s, e in zip(steps, noise)]]
    target = law(100)
    fn = wf.smooth_curve(dense, dense, 40)
    assert wf.steps_to_target_smooth(fn, target, 320) == pytest.approx(100, abs=6)
    got = wf.steps_to_target_smooth(wf.smooth_curve(slow, dense, 40), target, 320)
    assert got == pytest.approx(125, abs=6)
    assert wf.steps_to_target_smooth(wf.smooth_curve(slow, dense, 40), target, 110) is None


def test_quick_run_writes_the_table_and_T_is_steps_times_step_time(tmp_path):
    out = tmp_path / "run"
    assert ws.main(["--quick", "--out-dir", str(out)]) == 0
    res = json.loads((out / "wan_speedrun.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "hquant4"}
    # fp32 activations forward + gradients backward, h = 32: 2 * 4 * 32 bytes per token exactly
    assert rows["dense"]["bytes_per_token"] == 256
    assert rows["hquant4"]["bytes_per_token"] < 0.25 * 256
    assert rows["dense"]["reached"]  # the target is the dense run's own loss: it must reach it
    for r in rows.values():
        if r["reached"]:
            assert r["T"]["slow"] == pytest.approx(r["steps_to_target"] * r["step_s"]["slow"])
            assert r["T_ratio"]["slow"] == pytest.approx(r["T"]["slow"] / rows["dense"]["T"]["slow"])
        assert r["step_s"]["slow"] > 0 and math.isfinite(r["step_s"]["slow"])
    a, b, c = wf.fit_power(rows["dense"]["val_curve"])
    assert res["target_loss"] == pytest.approx(a + b * 12 ** -c, abs=1e-3)
    table = (out / "wan_speedrun.md").read_text()
    assert "| dense |" in table and "| hquant4 |" in table
    # resumable: a second run reuses every finished cell
    assert ws.main(["--quick", "--out-dir", str(out)]) == 0
    assert json.loads((out / "wan_speedrun.json").read_text())["rows"] == res["rows"]


def test_summary_prices_measured_bytes_on_a_wan_link():
    """2 steps, 4 microbatches, PP=2: 8 messages a step; 1 MB sent of 4 MB raw -> 0.5 / 2 MB per step;
    at 200 Mbit/s + 50 ms: 0.02 + 0.4 s vs 0.08 + 0.4 s."""
    mod = load_example("summarize_log")
    log = ("megaclap: world 2 = tp 1 x dp 1 x pp 2, device cpu, 4 microbatches per step\n"
           " iteration        2/       2 | consumed samples: 16 | lm loss: 5.0E+00 | pp bytes sent: 1.0E+06 |"
           " pp raw bytes: 4.0E+06 |\n")
    line = mod.wan_lines(mod.parse_log(log), 200, 50)[0]
    assert "wire 0.420 s/step vs dense 2.00 MB -> 0.480 s/step" in line and "8 messages" in line
