"""bench/wan_speedrun.py: the measuring rules (steps to target, targets, steady state, T, intervals,
verdicts), on synthetic numbers with known answers, and a --quick run."""
import json
import math

import pytest

from bench import stats
from bench import wan_fit as wf
from bench import wan_speedrun as ws
from bench.wan_configs import CONFIGS, available
from tools.ablate_data import load_example


def test_steps_to_target_interpolates_between_evaluations_and_says_when_never_reached():
    curve = [[25, 50, 75, 100], [6.0, 5.0, 4.0, 3.5]]
    assert wf.steps_to_target(curve, 4.5) == pytest.approx(62.5)    # halfway from 50 (5.0) to 75 (4.0)
    assert wf.steps_to_target(curve, 4.0) == pytest.approx(75.0)    # "at or below": the point itself
    assert wf.steps_to_target(curve, 3.75) == pytest.approx(87.5)
    assert wf.steps_to_target(curve, 6.5) == pytest.approx(25.0)    # already below at the first point
    assert wf.steps_to_target(curve, 3.0) is None
    assert [wf.crossing_gap(curve, t) for t in (4.5, 6.5, 3.0)] == [25, 0, None]
    # the first crossing counts, not a later one after a bump
    assert wf.steps_to_target([[10, 20, 30, 40], [5.0, 3.9, 4.2, 3.0]], 4.0) == pytest.approx(10 + 10 / 1.1)


def test_targets_are_reached_by_every_dense_seed():
    """Per seed the loss at 95% of the schedule and at its end; the targets are the highest."""
    a = [[50, 95, 100], [5.0, 3.50, 3.40]]
    b = [[50, 95, 100], [5.0, 3.60, 3.45]]
    t = wf.targets([a, b], 100, 0.95)
    assert t == {"end": pytest.approx(3.60), "final": pytest.approx(3.45)}
    assert all(wf.steps_to_target(c, t["end"]) <= 95 for c in (a, b))
    assert all(wf.steps_to_target(c, t["final"]) <= 100 for c in (a, b))


def test_steady_state_is_protocol_nanogpts_rule():
    """10-step windows; steady from the first three consecutive windows within 1%, their mean."""
    warm = [3.0] * 10 + [2.0] * 10                       # two slow windows (warm-up)
    steady = [1.0] * 10 + [1.005] * 10 + [0.998] * 10    # three windows within 1%
    st = wf.steady_state(warm + steady + [5.0] * 10)
    assert st["steady"] and st["start"] == 20
    assert st["s"] == pytest.approx((1.0 + 1.005 + 0.998) / 3)
    # 2% apart: never steady; the median window mean is reported and flagged
    wobbly = [1.0] * 10 + [1.02] * 10 + [1.0] * 10 + [1.02] * 10
    st = wf.steady_state(wobbly)
    assert not st["steady"] and st["s"] == pytest.approx(1.01)
    assert wf.steady_state([1.0] * 9) is None


def test_kind_step_times_split_fresh_and_repeated_steps():
    fresh = [True, False] * 40
    times = [1.0 if f else 0.25 for f in fresh]
    kinds = wf.kind_step_times(times, fresh, warmup=4, window=10, count=3, tol=0.01)
    assert kinds["fresh"]["s"] == 1.0 and kinds["repeat"]["s"] == 0.25
    assert wf.kind_step_times([1.0] * 40, [True] * 40, window=10)["repeat"] is None


def test_time_to_target_sums_the_realised_sequence_not_p():
    """Fresh steps 1 s, repeats 0.2 s; 4.5 steps of F R R F F: 1 + 0.2 + 0.2 + 1 + 0.5 * 1."""
    fresh = [True, False, False, True, True, False]
    assert wf.time_to_target(fresh, 4.5, 1.0, 0.2) == pytest.approx(2.9)
    assert wf.time_to_target(fresh, 2.0, 1.0, 0.2) == pytest.approx(1.2)
    assert wf.time_to_target([True] * 4, 4.0, 0.5, None) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        wf.time_to_target(fresh, 6.5, 1.0, 0.2)


def test_mean_interval_is_students_t():
    iv = stats.mean_interval([10.0, 12.0, 14.0])          # sd 2, n 3: t(2) = 4.303
    assert iv["mean"] == 12.0 and iv["hi"] - 12.0 == pytest.approx(4.303 * 2 / math.sqrt(3))
    assert stats.mean_interval([1.0, None, 2.0]) is None   # a seed that never got there
    assert stats.mean_interval([5.0])["lo"] is None
    assert stats.t975(3) == 3.182 and stats.t975(120) == pytest.approx(1.98, abs=0.002)


def test_verdict_only_where_intervals_separate():
    dense = {"mean": 100.0, "lo": 95.0, "hi": 105.0, "n": 3}
    assert stats.verdict({"mean": 80.0, "lo": 75.0, "hi": 85.0, "n": 3}, dense) == "pays"
    assert stats.verdict({"mean": 120.0, "lo": 110.0, "hi": 130.0, "n": 3}, dense) == "does not pay"
    assert stats.verdict({"mean": 90.0, "lo": 80.0, "hi": 96.0, "n": 3}, dense) == "unresolved"
    assert stats.verdict({"mean": 90.0, "lo": None, "hi": None, "n": 1}, dense) == "unresolved"
    assert stats.verdict(None, dense) == "not reached"


def test_configurations_with_unknown_codecs_are_skipped_with_a_reason():
    def parse(spec):
        if spec.startswith("lowrank"):
            raise ValueError("unknown codec")
    ok, skipped = available(["dense", "lowrank8", "fu-0.5"], parse)
    assert ok == ["dense", "fu-0.5"] and "lowrank:8" in skipped["lowrank8"]
    assert all(c.p is None or 0 < c.p < 1 for c in CONFIGS.values())


@pytest.mark.parametrize("preset", ["cpu", "gpt2-124m"])
def test_every_configuration_of_a_preset_is_a_valid_run(preset):
    """The flags each run would get (compression, lazy sampling, eval schedule, dropout 0) pass
    megaclap's start-up checks at the preset's pipeline size: no typo waits for hour 1 of a run."""
    from megaclap.config import parse_args
    from megaclap.compression.codecs import parse_codec
    from bench.wan_configs import PRESETS
    from bench.wan_runs import TorchrunBackend, eval_schedule
    pr = PRESETS[preset]
    backend = TorchrunBackend(pr, "/nonexistent")
    names, _ = available(list(pr.configs), parse_codec)
    assert "dense" in names and len(names) >= 6
    for name in names:
        cell = backend._cell(name, "t", CONFIGS[name].p, f"--full-validation --eval-interval-schedule "
                             f"{eval_schedule(2 * pr.train_iters, pr)}")
        argv = ["--num-layers", "8", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
                "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", "10", "--mock-data",
                "--vocab-size", "64", "--pipeline-model-parallel-size", str(pr.pp)]
        cfg = parse_args(argv + cell.compression_flags() + cell.args.split()).validate(pr.pp)
        assert cfg.model.hidden_dropout == 0 and cfg.train.full_validation, name


def test_quick_run_writes_the_table_with_seeds_and_intervals(tmp_path):
    out = tmp_path / "run"
    assert ws.main(["--quick", "--out-dir", str(out)]) == 0
    res = json.loads((out / "wan_speedrun.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "hquant4"} and res["seeds"] == [1234, 1235, 1236]
    # bf16 wire, h = 32: 2 bytes x 32 per token per direction exactly; hquant:4 fwd is 4.25 bits
    assert rows["dense"]["bytes_per_token"] == {"fwd": 64.0, "bwd": 64.0}
    assert rows["hquant4"]["bytes_per_token"]["fwd"] < 0.3 * 64
    assert res["valid_tokens"] == 4 * 8 * 32
    for name, tgt in (("dense", "end"), ("dense", "final")):
        r = rows[name]["targets"][tgt]
        assert r["reached"] == 3 and r["steps"]["lo"] <= r["steps"]["mean"] <= r["steps"]["hi"]
    for r in rows.values():
        res_end = r["targets"]["end"]
        for steps, t, step_s in zip(res_end["steps_per_seed"], res_end["T_per_seed"]["slow"],
                                    res_end["fresh_s_per_seed"]["slow"]):
            if steps is not None:   # every step of this run is fresh: T = steps x its fresh step time
                assert t == pytest.approx(steps * step_s)
    table = (out / "wan_speedrun.md").read_text()
    assert "| dense |" in table and "| hquant4 |" in table and "Target end" in table and "[" in table
    # resumable: a second run reuses every finished run
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
