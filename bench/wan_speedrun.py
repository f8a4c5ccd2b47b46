"""WAN speedrun: wall-clock time to a target validation loss over a slow link (T = steps x step time).

    python -m bench.wan_speedrun                 # the full CPU default (15 configurations x 2 links)
    python -m bench.wan_speedrun --quick         # two configurations, tiny model, < 1 min

For each configuration (compression method, codecs, lazy-sampling p):

- a **loss run** without a simulated link, validation every --eval-interval steps, gives the
  steps to reach the target loss. Each evaluation reads the next validation batches, so one
  point is noisy (+-0.1 here), but every run reads the same batches at the same steps: the
  noise is shared. So the dense curve is fitted with a + b * step^-c, each configuration's
  gap to dense at equal steps with a line (points from 1/8 of the run on), and a
  configuration's smooth curve is dense fit + gap fit; steps to target = first step where it
  is <= the target (the raw first crossing is kept in the JSON too). Target = the dense fit
  at --target-fraction of --train-iters, or --target-loss.
  Every run lasts --train-iters = 2x the dense steps at fraction 0.5; a configuration that
  does not reach the target within 2x the dense run's steps to target says so.
- a **timing run** with the simulated link (--sim-link-bandwidth/--sim-link-latency, the p2p
  layer's receiver-side wire model) per link gives the steady-state step time: per kind of
  step (fresh / lazily repeated), the mean over windows of --window steps after --warmup
  steps; the median of the windows that agree with the median within 2%; fresh and repeated
  steps weighted p and 1 - p. A run's timing depends only on its bytes and compute, so one
  timing run per configuration and link serves every T, and configurations that differ only
  in p share one (TIMED_BY).
- T = steps to target x step time; T ratio against dense on the same link; bytes per token
  per boundary on the wire (loss run's payload bytes, both directions / tokens).

Runs are tools/ablate.py cells (torchrun through examples/pretrain_gpt/pretrain_gpt_distributed.sh)
under --out-dir/cells/<name>; a finished cell is skipped, so an interrupted benchmark resumes.
Data: the quickstart's standard-library corpus built offline (tools/ablate_data.py), or
--data-path PREFIX with --tokenizer-model; --quick uses mock data. Writes JSON, a markdown table
and a PNG of T against bandwidth (main configurations) to --results (a path prefix).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import ablate, ablate_report  # noqa: E402
from tools.ablate_data import DataPlan  # noqa: E402
from bench.wan_fit import (fit_gap, fit_power, smooth_curve, steady_step_time, steps_to_target,  # noqa: E402
                           steps_to_target_smooth)

# name: (method, bwd_method, fwd codec, bwd codec, p, extra flags); dense is the baseline
Q8 = "hquant:8"
CONFIGS = {
    "dense": ("none", None, "identity", "identity", None, ""),
    "bf16": ("direct", None, "cast:bf16", "cast:bf16", None, ""),
    "quant8": ("direct", None, "quant:8", "quant:8", None, ""),
    "quant4": ("direct", None, "quant:4", "quant:8", None, ""),
    "hquant4": ("direct", None, "hquant:4", Q8, None, ""),
    "hquant3": ("direct", None, "hquant:3", Q8, None, ""),
    "hquant2": ("direct", None, "hquant:2", Q8, None, ""),
    "hquant3-bwd4": ("direct", None, "hquant:3", "hquant:4:sr", None, ""),
    "aqsgd": ("aqsgd", "direct", "hquant:4", Q8, 0.5, ""),
    "fu-0.5": ("clapping-fu", "direct", "hquant:4", Q8, 0.5, ""),
    "fu-0.25": ("clapping-fu", "direct", "hquant:4", Q8, 0.25, ""),
    "fc-0.5": ("clapping-fc", "direct", "hquant:3", Q8, 0.5, ""),
    "fc-0.25": ("clapping-fc", "direct", "hquant:3", Q8, 0.25, ""),
    "fresh4-delta2-bwd4-0.5": ("clapping-fu", "direct", "hquant:2", "hquant:4:sr", 0.5,
                               "--clapping-fresh-codec hquant:4"),
    "none-lazy-0.5": ("none", None, "identity", "identity", 0.5, ""),
}
# A run's step times depend only on its bytes and compute: these reuse another's timing runs
# (fresh and repeated steps are timed separately, then weighted by each configuration's own p).
TIMED_BY = {"none-lazy-0.5": "dense", "fu-0.25": "fu-0.5", "fc-0.25": "fc-0.5"}
MAIN = ["dense", "bf16", "quant4", "hquant3-bwd4", "fu-0.5", "fresh4-delta2-bwd4-0.5"]  # in the PNG
QUICK_CONFIGS = ["dense", "hquant4"]

DEFAULT_MODEL = {"config": "gpt-tiny", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                 "ffn_hidden_size": 256, "seq_length": 64, "max_position_embeddings": 64,
                 "micro_batch_size": 2, "global_batch_size": 8}
QUICK_MODEL = {**DEFAULT_MODEL, "hidden_size": 32, "ffn_hidden_size": 64, "seq_length": 32,
               "max_position_embeddings": 32}


# --- runs ------------------------------------------------------------------------------------
def make_cell(name: str, model: str, link=None, timing_iters: int = 0) -> ablate.Cell:
    """The ablate cell of one loss run (link None) or one timing run over `link`."""
    method, bwd_method, fwd, bwd, p, extra = CONFIGS[name]
    tag, args = f"{name}-loss", extra
    if link is not None:
        bw, lat = link
        tag = f"{name}-time-{bw}-{lat}"
        args = (f"{extra} --sim-link-bandwidth {bw} --sim-link-latency {lat} --train-iters {timing_iters} "
                f"--log-interval 1 --eval-interval {timing_iters + 1} --lr-warmup-iters 1").strip()
    return ablate.Cell(model=model, regime="default", method=method, bwd_method=bwd_method,
                       fwd_codec=fwd, bwd_codec=bwd, p=p, args=args, tag=tag)


def build_grid(args) -> dict:
    model = dict(QUICK_MODEL if args.quick else DEFAULT_MODEL)
    model.update({k: v for k, v in (("num_layers", args.num_layers), ("hidden_size", args.hidden_size),
                                     ("seq_length", args.seq_length)) if v})
    model["max_position_embeddings"] = model["seq_length"]
    if args.pp > 2 and model["num_layers"] < args.pp:
        model["num_layers"] = args.pp
    train = {"train_iters": args.train_iters, "log_interval": args.log_interval,
             "eval_interval": args.eval_interval, "eval_iters": args.eval_iters, "seed": args.seed}
    # the model's name carries a hash of every setting, so a finished cell is reused only as is
    key = "m" + hashlib.sha1(json.dumps([model, train, args.pp, data_spec(args)], sort_keys=True).encode()).hexdigest()[:6]
    return {"name": "wan_speedrun", "launch": {"nproc": args.pp, "tp": 1, "pp": args.pp, "timeout_s": 1800},
            "train": train, "models": {key: model}, "regimes": {"default": {}}}


def data_spec(args) -> dict:
    if args.quick or args.mock_data:
        return {"mock": True, "vocab_size": 512}
    if args.data_path:
        return {"prefix": args.data_path, "tokenizer_model": args.tokenizer_model,
                "tokenizer_type": args.tokenizer_type, "split": args.split}
    return {"build": "stdlib", "vocab_size": 4096, "valid_files": 24}


def run(grid, cell, plan, cells_dir) -> dict:
    res = ablate.run_cell(grid, cell, plan, cells_dir, dry_run=False)
    if res is None:
        raise RuntimeError(f"wan_speedrun: run {cell.name} failed; see {cells_dir}/{cell.name}/train.log")
    return res


def timing_iters(seed: int, p, window: int, warmup: int) -> int:
    """Steps for a timing run: enough that fresh and repeated steps after warm-up each fill 2
    windows (the lazy schedule is a pure function of seed and p)."""
    from megaclap.data.samplers import LazySchedule
    n = warmup + 2 * window
    if p is None:
        return n
    sched = LazySchedule(seed, p)
    while True:
        mask = sched.fresh_mask(0, n)[warmup:]
        if min(mask.sum(), (~mask).sum()) >= 2 * window:
            return n
        n += 1


# --- measurements ------------------------------------------------------------------------------
def iteration_times(cell_dir: str) -> list:
    """Seconds of each training step (iteration-time scalar, --log-interval 1)."""
    pts = ablate_report.read_scalars(os.path.join(cell_dir, "tb")).get("iteration-time", [])
    return [v for _, v in sorted(pts)]


# --- the report ------------------------------------------------------------------------------
def is_clapping(name: str) -> bool:
    return CONFIGS[name][0].startswith("clapping")


def is_stateless(name: str) -> bool:
    method, bwd, _, _, p, _ = CONFIGS[name]
    return method in ("none", "direct") and (bwd or method) in ("none", "direct") and p is None


def clapping_verdict(ratio: float, clap: dict, free: dict, link: str) -> str:
    """'pays' only when Clapping is more than 5% faster on stable timings; 'does not pay' when it
    is no faster on stable timings; otherwise no clear winner (the machine's timing noise)."""
    stable = clap["stable"][link] and free["stable"][link]
    if stable and ratio < 0.95:
        return "Clapping pays"
    if stable and ratio >= 1:
        return "Clapping does not pay"
    return "no clear winner (within 5% or timing windows unstable)"


def verdicts(rows: list, links: dict) -> list:
    """Plain sentences: the best configuration per link, and where Clapping stands."""
    lines = []
    for link in links:
        ok = [r for r in rows if r["T"].get(link) is not None]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["T"][link])
        line = (f"{link} link ({links[link][0]}, {links[link][1]}): best {best['name']} T = "
                f"{best['T'][link]:.1f} s = {best['T_ratio'][link]:.3f}x dense")
        clap = [r for r in ok if is_clapping(r["name"])]
        free = [r for r in ok if is_stateless(r["name"]) and r["name"] != "dense"]
        if clap and free:
            c, s = min(clap, key=lambda r: r["T"][link]), min(free, key=lambda r: r["T"][link])
            ratio = c["T"][link] / s["T"][link]
            line += (f"; best Clapping {c['name']} T = {c['T'][link]:.1f} s, {ratio:.2f}x the best stateless "
                     f"({s['name']}, {s['T'][link]:.1f} s): {clapping_verdict(ratio, c, s, link)}")
        lines.append(line)
    return lines


def markdown(result: dict) -> list:
    links = result["links"]
    head = "| config | method | fwd / bwd codec | p | bytes/token/boundary | steps to target | steps ratio |"
    for link in links:
        head += f" {link}: step ms | {link}: T (s) | {link}: T ratio |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        method = r["method"] + (f" / {r['bwd_method']}" if r["bwd_method"] else "")
        steps = (f"{r['steps_to_target']:.0f}" if r["reached"] else
                 f"not reached within {result['step_limit']:.0f} (val {r['final_val']:.3f})")
        ratio = f"{r['steps_ratio']:.2f}" if r["reached"] else "-"
        cells = [r["name"], method, f"{r['fwd_codec']} / {r['bwd_codec']}", "1" if r["p"] is None else f"{r['p']:g}",
                 f"{r['bytes_per_token']:.0f}", steps, ratio]
        for link in links:
            t = r["T"].get(link)
            cells += [f"{r['step_s'][link] * 1e3:.0f}" + ("" if r["stable"][link] else "*"),
                      f"{t:.1f}" if t is not None else "-", f"{r['T_ratio'][link]:.3f}" if t is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *[f"- {v}" for v in result["verdicts"]]]


def plot(result: dict, path: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from megaclap.config.units import parse_bandwidth
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["rows"]:
        pts = sorted((parse_bandwidth(bw) / 1e6, t) for bw, t in r.get("sweep", {}).items() if t is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=r["name"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(f"link bandwidth (Mbit/s), latency {result['sweep_latency']}")
    ax.set_ylabel("T = steps to target x step time (s)")
    ax.set_title(f"time to validation loss {result['target_loss']:.3f} (PP={result['pp']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# --- the benchmark -------------------------------------------------------------------------------
def measure(args) -> dict:
    """Every loss and timing run (resumable), then the result dict."""
    from megaclap.data.samplers import LazySchedule
    grid, out_dir = build_grid(args), os.path.abspath(args.out_dir)
    plan, cells_dir = DataPlan(data_spec(args), os.path.join(out_dir, "data")), os.path.join(out_dir, "cells")
    names = args.configs or (QUICK_CONFIGS if args.quick else list(CONFIGS))
    links = {"slow": (args.slow_bandwidth, args.slow_latency)}
    if not args.quick:
        links["moderate"] = (args.moderate_bandwidth, args.moderate_latency)
    model = next(iter(grid["models"]))
    loss = {n: run(grid, make_cell(n, model), plan, cells_dir) for n in names}
    dense, start = loss["dense"]["val_curve"], args.train_iters / 8
    dense_fn = smooth_curve(dense, dense, start)
    target = args.target_loss if args.target_loss is not None else dense_fn(args.target_fraction * args.train_iters)
    dense_steps = steps_to_target_smooth(dense_fn, target, args.train_iters)
    if dense_steps is None:
        raise SystemExit(f"wan_speedrun: the dense run never reaches --target-loss {target}")
    limit = min(2 * dense_steps, args.train_iters)
    rows = []
    for n in names:
        method, bwd_method, fwd, bwd, p, extra = CONFIGS[n]
        res = loss[n]
        steps = steps_to_target_smooth(smooth_curve(res["val_curve"], dense, start), target, limit)
        reached = steps is not None
        row = {"name": n, "method": method, "bwd_method": bwd_method, "fwd_codec": fwd, "bwd_codec": bwd, "p": p,
               "extra_args": extra, "steps_to_target": steps if reached else None, "reached": reached,
               "steps_ratio": steps / dense_steps if reached else None, "final_val": res["val_loss"],
               "raw_first_crossing": steps_to_target(res["val_curve"], target),
               "gap_fit": fit_gap(res["val_curve"], dense, start),
               "bytes_per_token": res["bytes_sent"] / res["tokens_seen"] / (args.pp - 1),
               "val_curve": res["val_curve"], "step_s": {}, "stable": {}, "timing": {}, "T": {}, "T_ratio": {},
               "sweep": {}}
        bws = {**{k: v for k, v in links.items()},
               **({f"sweep-{bw}": (bw, args.slow_latency) for bw in args.sweep_bandwidths} if n in MAIN else {})}
        timer = TIMED_BY.get(n, n) if TIMED_BY.get(n) in names else n
        tp = CONFIGS[timer][4]
        for key, link in bws.items():
            cell = make_cell(timer, model, link, timing_iters(args.seed, tp, args.window, args.warmup))
            run(grid, cell, plan, cells_dir)
            times = iteration_times(os.path.join(cells_dir, cell.name))
            fresh = LazySchedule(args.seed, tp).fresh_mask(0, len(times)).tolist()
            st = {**steady_step_time(times, fresh, tp, args.warmup, args.window, weight_p=p), "run": cell.name}
            t = steps * st["step_s"] if reached else None
            if key in links:
                row["step_s"][key], row["stable"][key], row["timing"][key], row["T"][key] = st["step_s"], st["stable"], st, t
            if link[1] == args.slow_latency and n in MAIN:
                row["sweep"][link[0]] = t
        rows.append(row)
    base = {k: v for k, v in rows[names.index("dense")]["T"].items()}
    for r in rows:
        r["T_ratio"] = {k: (t / base[k] if t is not None else None) for k, t in r["T"].items()}
    result = {"target_loss": target, "target_fraction": None if args.target_loss is not None else args.target_fraction,
              "dense_steps_to_target": dense_steps, "dense_fit": fit_power(dense), "step_limit": limit, "pp": args.pp, "links": links,
              "sweep_latency": args.slow_latency, "model": grid["models"][model], "train": grid["train"],
              "data": data_spec(args), "warmup": args.warmup, "window": args.window, "rows": rows,
              "command": "python -m bench.wan_speedrun " + " ".join(sys.argv[1:])}
    result["verdicts"] = verdicts(rows, links)
    return result


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two configurations, tiny model, mock data (< 1 min)")
    p.add_argument("--out-dir", default=None, help="runs (resumable) [runs/wan_speedrun, quick: runs/wan_speedrun_quick]")
    p.add_argument("--results", default=None, help="path prefix of .json/.md/.png [bench/results/wan_speedrun; "
                                                   "quick: <out-dir>/wan_speedrun]")
    p.add_argument("--configs", nargs="*", default=None, help=f"subset of {', '.join(CONFIGS)} (dense always)")
    p.add_argument("--pp", type=int, default=2, help="pipeline stages (one process each) [2]")
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--train-iters", type=int, default=None, help="steps of every loss run [160; quick 24]")
    p.add_argument("--eval-interval", type=int, default=None, help="validation every K steps [10; quick 4]")
    p.add_argument("--eval-iters", type=int, default=None, help="validation batches [4; quick 2]")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--target-fraction", type=float, default=0.5,
                   help="target = dense validation loss at this fraction of its run (<= 0.5) [0.5]")
    p.add_argument("--target-loss", type=float, default=None, help="a fixed target instead")
    p.add_argument("--slow-bandwidth", default="250kbit", help="slow link: wire >> compute [250kbit]")
    p.add_argument("--slow-latency", default="10ms", help="[10ms]")
    p.add_argument("--moderate-bandwidth", default="20mbit", help="moderate link: wire ~ compute [20mbit]")
    p.add_argument("--moderate-latency", default="10ms", help="[10ms]")
    p.add_argument("--sweep-bandwidths", nargs="*", default=None,
                   help="extra bandwidths (at the slow latency) for the PNG's main configurations, e.g. 5mbit 200mbit "
                        "(the PNG always has the links' own points) [1mbit]")
    p.add_argument("--warmup", type=int, default=3, help="timing steps left out [3]")
    p.add_argument("--window", type=int, default=3, help="timing window in steps [3]")
    p.add_argument("--data-path", default=None, help="a .bin/.idx prefix instead of the stdlib corpus")
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--tokenizer-type", default="SentencePieceTokenizer")
    p.add_argument("--split", default="949,50,1")
    p.add_argument("--mock-data", action="store_true", help="synthetic tokens")
    a = p.parse_args(argv)
    q = a.quick
    a.train_iters = a.train_iters or (24 if q else 160)
    a.eval_interval = a.eval_interval or (4 if q else 10)
    a.eval_iters = a.eval_iters or (2 if q else 4)
    a.log_interval = min(a.log_interval, a.train_iters)
    a.out_dir = a.out_dir or os.path.join("runs", "wan_speedrun_quick" if q else "wan_speedrun")
    a.results = a.results or (os.path.join(a.out_dir, "wan_speedrun") if q else "bench/results/wan_speedrun")
    if a.sweep_bandwidths is None:
        a.sweep_bandwidths = [] if q else ["1mbit"]
    if not 0 < a.target_fraction <= 0.5:
        p.error(f"--target-fraction {a.target_fraction}: must be in (0, 0.5] (runs last 2x the dense steps)")
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
    result = measure(args)
    table = markdown(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    write_text(args.results + ".json", json.dumps(result, indent=1))
    write_text(args.results + ".md", "\n".join([f"`{result['command']}`", "", *table, ""]))
    if any(r["sweep"] for r in result["rows"]):
        plot(result, args.results + ".png")
    print(f"\ntarget validation loss {result['target_loss']:.4f} (dense: {result['dense_steps_to_target']:.0f} steps)")
    print("\n".join(table))
    print(f"\nwrote {args.results}.json/.md" + ("/.png" if any(r["sweep"] for r in result["rows"]) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
