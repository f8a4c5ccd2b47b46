"""WAN speedrun: wall-clock time to a target validation loss over slow links, with seeds.

    python -m bench.wan_speedrun --quick                 # smoke test: 2 configurations x 3 seeds, < 1 min
    python -m bench.wan_speedrun --preset cpu            # two CPU cores, PP=4 (resumable)
    python -m bench.wan_speedrun --preset gpt2-124m      # one GPU, 8 emulated stages (issue 19)

Per preset (bench/wan_configs.py: model, data, PP, links, seeds, schedules, rules):

1. Dense runs (bf16 wire, dropout 0), one per seed, with --full-validation: every evaluation
   reads the same validation tokens in full, every `eval_coarse` steps and every `eval_fine`
   steps from `fine_from` x the run's own steps on (where its decayed schedule meets the targets).
2. Targets (bench/wan_fit.targets): "end" = the dense runs' loss at 95% of their decayed
   schedule, "final" = the dense final loss (each the highest over the dense seeds).
3. Every configuration, every seed: steps to target = the first evaluation at or below it,
   interpolated (a power-law fit's crossing is shown beside it as a diagnostic). A configuration
   runs its own schedule: the smallest factor of the dense steps (`schedule_factors`, up to 2x) at
   which every seed reaches the target.
4. Step times: steady state per kind of step (fresh / lazily repeated) over each link, Protocol
   NanoGPT's rule (10-step windows, three consecutive within 1%); T per seed = the sum over that
   run's realised fresh/repeated steps up to the target of each kind's step time.
5. Mean and 95% interval (Student's t over seeds) of steps to target and of T; configurations
   within 5% of the best T get `more_seeds` seeds; verdict vs dense on each link: "pays" or
   "does not pay" only where the intervals separate, else "unresolved".

Runs come from bench/wan_runs.py (today: tools/ablate.py cells over torchrun under --out-dir,
resumable); the analysis reads only their records. Writes JSON and a markdown table to --results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import stats  # noqa: E402
from bench.wan_configs import CONFIGS, PRESETS, Preset, available  # noqa: E402
from bench.wan_fit import (crossing_gap, fitted_steps_to_target, steps_to_target, targets,  # noqa: E402
                           time_to_target)
from bench.wan_report import markdown, write_text  # noqa: E402


class Runs:
    """Records by (configuration, seed, schedule factor), produced once by the backend."""

    def __init__(self, backend, preset: Preset):
        self.backend, self.preset, self.cache = backend, preset, {}

    def get(self, name: str, seed: int, factor: float) -> dict:
        key = (name, seed, factor)
        if key not in self.cache:
            self.cache[key] = self.backend.record(name, seed, int(round(factor * self.preset.train_iters)))
        return self.cache[key]


def seed_list(base: int, n: int) -> list:
    return list(range(base, base + n))


def reach(runs: Runs, name: str, seeds: list, target: float) -> tuple:
    """(factor, records, steps per seed) at the smallest schedule factor where every seed reaches
    the target; at the largest factor with None steps where some seed never does."""
    for factor in runs.preset.schedule_factors:
        recs = [runs.get(name, s, factor) for s in seeds]
        steps = [steps_to_target(r["val_curve"], target) for r in recs]
        if all(s is not None for s in steps):
            return factor, recs, steps
    return factor, recs, steps


def per_target(runs: Runs, name: str, seeds: list, target: float) -> dict:
    """Steps and T (per link) of one configuration at one target, per seed and summarised."""
    factor, recs, steps = reach(runs, name, seeds, target)
    out = {"factor": factor, "seeds": seeds, "steps_per_seed": steps, "steps": stats.mean_interval(steps),
           "reached": sum(s is not None for s in steps),
           "fitted_steps": [fitted_steps_to_target(r["val_curve"], target, r["iters"]) for r in recs],
           "crossing_gaps": [crossing_gap(r["val_curve"], target) for r in recs],
           "T_per_seed": {}, "T": {}, "step_s": {}, "fresh_s_per_seed": {}}
    for link in recs[0]["step_s"]:
        ts = [None if s is None else time_to_target(r["fresh"], s, r["step_s"][link]["fresh"],
                                                    r["step_s"][link]["repeat"]) for r, s in zip(recs, steps)]
        out["T_per_seed"][link], out["T"][link] = ts, stats.mean_interval(ts)
        out["step_s"][link] = {k: recs[0]["step_s"][link][k] for k in ("fresh", "repeat", "steady")}
        out["fresh_s_per_seed"][link] = [r["step_s"][link]["fresh"] for r in recs]
    return out


def row_of(runs: Runs, name: str, seeds: list, tgs: dict) -> dict:
    c = CONFIGS[name]
    first = runs.get(name, seeds[0], 1.0)
    return {"name": name, "group": c.group, "method": c.method, "bwd_method": c.bwd_method,
            "fwd_codec": c.fwd, "bwd_codec": c.bwd, "p": c.p, "extra_args": c.extra,
            "bytes_per_token": first["bytes_per_token"], "rel_err": first["rel_err"],
            "tokens_per_s": first["tokens_per_s"], "tflops": first["tflops"], "mfu": first["mfu"],
            "val_curve": first["val_curve"],
            "targets": {t: per_target(runs, name, seeds, loss) for t, loss in tgs.items()}}


def close_to_best(rows: list, within: float = 1.05) -> set:
    """Names whose mean T is within 5% of the best mean T at some target and link."""
    close = set()
    for t in rows[0]["targets"]:
        for link in rows[0]["targets"][t]["T"]:
            ts = {r["name"]: r["targets"][t]["T"][link] for r in rows}
            means = {n: iv["mean"] for n, iv in ts.items() if iv}
            if means:
                best = min(means.values())
                close |= {n for n, m in means.items() if m <= within * best}
    return close


def add_verdicts(rows: list) -> None:
    dense = next(r for r in rows if r["name"] == "dense")
    for r in rows:
        for t, res in r["targets"].items():
            base = dense["targets"][t]
            res["T_ratio"] = {k: (v["mean"] / base["T"][k]["mean"] if v and base["T"][k] else None)
                              for k, v in res["T"].items()}
            res["verdict"] = {k: "baseline" if r is dense else stats.verdict(v, base["T"][k])
                              for k, v in res["T"].items()}


def measure(args, preset: Preset, backend) -> dict:
    """Every run (resumable through the backend), then the result dict."""
    from megaclap.compression.codecs import parse_codec
    names, skipped = available(args.configs or list(preset.configs), parse_codec)
    for name, why in skipped.items():
        print(f"wan_speedrun: skipping {name}: {why}", flush=True)
    runs, seeds = Runs(backend, preset), seed_list(args.seed, preset.seeds)
    dense = [runs.get("dense", s, 1.0) for s in seeds]
    if dense[0]["valid_tokens"] < preset.min_valid_tokens:
        print(f"wan_speedrun: the validation split holds {dense[0]['valid_tokens']} tokens, fewer than "
              f"preset {preset.name}'s {preset.min_valid_tokens}; give the corpus a larger validation split",
              file=sys.stderr)
        raise SystemExit(2)
    tgs = targets([r["val_curve"] for r in dense], preset.train_iters, preset.target_fraction)
    rows = [row_of(runs, n, seeds, tgs) for n in names]
    more = seed_list(args.seed, max(preset.more_seeds, preset.seeds))
    if len(more) > len(seeds):
        close = close_to_best(rows) | {"dense"}
        rows = [row_of(runs, r["name"], more, tgs) if r["name"] in close else r for r in rows]
    add_verdicts(rows)
    rules = {"window": preset.window, "windows": preset.windows, "tol": preset.tol,
             "schedule_factors": preset.schedule_factors}
    argv = sys.argv[1:] if args.argv is None else args.argv
    return {"preset": preset.name, "scale": preset.scale, "targets": tgs,
            "target_fraction": preset.target_fraction, "dense_iters": preset.train_iters, "pp": preset.pp,
            "links": preset.links, "model": preset.model, "data": backend.data,
            "valid_tokens": dense[0]["valid_tokens"], "seeds": seeds, "rows": rows, "skipped": skipped,
            "rules": rules, "command": "python -m bench.wan_speedrun " + " ".join(argv)}


def make_backend(preset: Preset, args):
    """Today's backend: tools/ablate.py cells over torchrun."""
    from bench.wan_runs import TorchrunBackend
    if preset.emulated:
        print(f"wan_speedrun: preset {preset.name} runs {preset.pp} stages on one device and needs the "
              "one-process emulated pipeline (--pp-emulate, issue 19), not in this build", file=sys.stderr)
        raise SystemExit(2)
    data = preset.data
    if args.data_path:
        data = {"prefix": args.data_path, "tokenizer_model": args.tokenizer_model,
                "tokenizer_type": args.tokenizer_type, "split": args.split}
    return TorchrunBackend(preset, os.path.abspath(args.out_dir), data, args.seed)


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="scale [cpu]")
    p.add_argument("--quick", action="store_true", help="--preset quick: the smoke test (< 1 min)")
    p.add_argument("--configs", nargs="*", default=None,
                   help=f"subset of {', '.join(CONFIGS)} (dense always)")
    p.add_argument("--out-dir", default=None, help="runs (resumable) [runs/wan_speedrun_<preset>]")
    p.add_argument("--results", default=None, help="path prefix of .json/.md [bench/results/"
                   "wan_speedrun_<preset>; quick: <out-dir>/wan_speedrun]")
    p.add_argument("--seed", type=int, default=1234, help="first seed; seeds are consecutive [1234]")
    p.add_argument("--pp", type=int, default=None,
                   help="pipeline stages instead of the preset's (cpu: 4; 2 also)")
    p.add_argument("--data-path", default=None, help="a .bin/.idx prefix instead of the preset's corpus")
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    p.add_argument("--split", default="949,50,1")
    a = p.parse_args(argv)
    a.argv = argv
    if a.quick:
        a.preset = "quick"
    a.out_dir = a.out_dir or os.path.join("runs", f"wan_speedrun_{a.preset}")
    a.results = a.results or (os.path.join(a.out_dir, "wan_speedrun") if a.preset == "quick"
                              else f"bench/results/wan_speedrun_{a.preset}")
    if a.configs:
        unknown = set(a.configs) - set(CONFIGS)
        if unknown:
            p.error(f"--configs: unknown {sorted(unknown)} (choose from {', '.join(CONFIGS)})")
        a.configs = ["dense"] + [c for c in a.configs if c != "dense"]
    if a.data_path and not a.tokenizer_model:
        p.error("--data-path needs --tokenizer-model (and --tokenizer-type if not sentencepiece)")
    return a


def main(argv=None) -> int:
    args = get_args(argv)
    preset = PRESETS[args.preset]
    if args.pp:
        preset = dataclasses.replace(preset, pp=args.pp, scale=f"{preset.scale}, PP={args.pp} instead")
    result = measure(args, preset, make_backend(preset, args))
    table = markdown(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    write_text(args.results + ".json", json.dumps(result, indent=1))
    write_text(args.results + ".md", "\n".join([f"`{result['command']}`", "", *table, ""]))
    print("\n".join(table))
    print(f"\nwrote {args.results}.json/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
