"""Results of tools/ablate.py: one cell's summary from its TensorBoard scalars and log, then the
grid's CSV, markdown table and plots.

Per cell (result.json): final train loss (mean of the last log interval), last validation
loss, tokens seen (steps x global batch x sequence), distinct training samples seen, payload
bytes per pipeline boundary, compression ratio (payload / raw, both directions), mean
tokens/s (first log interval left out), peak reference memory (m, e or AQ-SGD's store,
summed over boundaries and directions), AQ-SGD's store rows on each data-parallel rank and the
curves the plots need.

Distinct samples are not in the training log; they are computed from the launch flags. The
lazy-sampling schedule is a pure function of (--seed, p), so the number of fresh steps is
exact (megaclap.data.samplers.LazySchedule); fresh steps x global batch samples are drawn,
and a few-epoch run has seen min(drawn, N) distinct ones, N being its training split's size
(built with megaclap's own dataset code). Online runs never revisit: distinct = drawn.
"""
from __future__ import annotations

import csv
import math
import os
import re
import statistics
from collections import defaultdict

from tools.ablate_data import load_example

PAYLOAD_RE = re.compile(r"compression/boundary(\d+)/(fwd|bwd)/"
                        r"(raw_bytes|payload_bytes|ref_memory_bytes|rel_err)")
STORE_RE = re.compile(r"aqsgd-store-rows/dp(\d+)")
TEST_RE = re.compile(r"(?:test loss at iteration \d+|validation loss at iteration \d+ on test set) \| "
                     r"lm loss value: ([-+0-9.eE]+)")   # older logs: "test loss at"
CSV_FIELDS = ("name", "model", "regime", "method", "bwd_method", "fwd_codec", "bwd_codec", "p",
              "iterations", "train_loss", "val_loss", "test_loss", "tokens_seen", "fresh_steps",
              "samples_drawn", "train_samples", "distinct_samples", "epochs", "bytes_sent",
              "bytes_sent_per_boundary", "raw_bytes", "ratio", "fwd_ratio", "bwd_ratio",
              "fwd_rel_err", "bwd_rel_err", "tokens_per_s", "ref_memory_bytes", "store_rows_per_dp_rank", "wall_s", "stopped_early")


# --- reading one cell ----------------------------------------------------------------------
def read_scalars(tb_dir: str) -> dict:
    """{tag: [(step, value)]} of every scalar in a TensorBoard directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def flag(argv: list, name: str, default=None):
    """The value of the last `name VALUE` in argv (argparse's last-one-wins), else default."""
    idx = [i for i, a in enumerate(argv[:-1]) if a == name]
    return argv[idx[-1] + 1] if idx else default


def flag_values(argv: list, name: str) -> list:
    """The values after the last `name` up to the next flag (for nargs='*' flags)."""
    idx = [i for i, a in enumerate(argv) if a == name]
    if not idx:
        return []
    out = []
    for a in argv[idx[-1] + 1:]:
        if a.startswith("--"):
            break
        out.append(a)
    return out


def train_split_size(argv: list, seq_length: int, seed: int):
    """Samples in the training split of the launch's data (None when blended or online)."""
    if "--online" in argv:
        return None
    if "--mock-data" in argv:
        from megaclap.data.builder import MOCK_TRAIN_SAMPLES
        return MOCK_TRAIN_SAMPLES
    prefixes = flag_values(argv, "--data-path")
    if len(prefixes) != 1:
        return None
    from megaclap.data.gpt_dataset import build_split_dataset
    ds = build_split_dataset(prefixes[0], flag(argv, "--split", "949,50,1"), 0, seq_length, seed)
    return len(ds) if ds is not None else None


def sample_counts(argv: list, iterations: int) -> dict:
    """Fresh steps, samples drawn, training-split size, distinct samples seen, epochs."""
    from megaclap.data.samplers import LazySchedule
    seed, gbs = int(flag(argv, "--seed", 1234)), int(flag(argv, "--global-batch-size"))
    prob, period = flag(argv, "--lazy-sampling-prob"), flag(argv, "--lazy-sampling-period")
    schedule = LazySchedule(seed, None if prob is None else float(prob),
                            None if period is None else int(period))
    fresh = schedule.count_fresh(iterations)
    n = train_split_size(argv, int(flag(argv, "--seq-length")), seed)
    drawn = fresh * gbs
    return {"fresh_steps": fresh, "samples_drawn": drawn, "train_samples": n,
            "distinct_samples": min(drawn, n) if n else drawn, "epochs": drawn / n if n else None}


def compression_totals(scalars: dict) -> dict:
    """Bytes per boundary, ratios, relative errors and reference memory over the run."""
    sums, errs, refs = defaultdict(float), defaultdict(list), defaultdict(float)
    per_step = defaultdict(float)     # payload bytes of every boundary, per logged step
    for tag, points in scalars.items():
        m = PAYLOAD_RE.fullmatch(tag)
        if not m:
            continue
        b, d, what = int(m.group(1)), m.group(2), m.group(3)
        if what == "rel_err":
            errs[d] += [v for _, v in points]
        elif what == "ref_memory_bytes":
            refs[(b, d)] = max(v for _, v in points)
        else:
            sums[(b, what, d)] += sum(v for _, v in points)
            if what == "payload_bytes":
                for step, v in points:
                    per_step[step] += v
    boundaries = sorted({b for b, _, _ in sums})
    sent = [sums[(b, "payload_bytes", "fwd")] + sums[(b, "payload_bytes", "bwd")] for b in boundaries]
    raw = sum(v for (b, w, d), v in sums.items() if w == "raw_bytes")

    def ratio(d):    # payload / raw of one direction over all boundaries
        r = sum(sums[(b, "raw_bytes", d)] for b in boundaries)
        return sum(sums[(b, "payload_bytes", d)] for b in boundaries) / r if r else 1.0
    steps = sorted(per_step)
    cumulative = [sum(per_step[s] for s in steps[:i + 1]) for i in range(len(steps))]
    return {"bytes_sent": sum(sent), "bytes_sent_per_boundary": sent, "raw_bytes": raw,
            "ratio": sum(sent) / raw if raw else 1.0, "fwd_ratio": ratio("fwd"), "bwd_ratio": ratio("bwd"),
            "fwd_rel_err": statistics.mean(errs["fwd"]) if errs["fwd"] else 0.0,
            "bwd_rel_err": statistics.mean(errs["bwd"]) if errs["bwd"] else 0.0,
            "ref_memory_bytes": sum(refs.values()), "bytes_curve": [steps, cumulative]}


def store_rows(scalars: dict) -> list:
    """AQ-SGD store rows on each data-parallel rank at the end of the run ([] without aqsgd)."""
    last = {int(m.group(1)): points[-1][1] for tag, points in scalars.items()
            if (m := STORE_RE.fullmatch(tag)) and points}
    return [int(last[r]) for r in sorted(last)]


def summarize_cell(cell_dir: str, cell: dict, argv: list, wall_s: float) -> dict:
    """A finished cell's result dict (what result.json holds)."""
    scalars = read_scalars(os.path.join(cell_dir, "tb"))
    with open(os.path.join(cell_dir, "train.log"), encoding="utf-8", errors="replace") as f:
        text = f.read()
    log = load_example("summarize_log").parse_log(text)
    train = scalars.get("lm loss", [])
    valid = scalars.get("lm loss validation", [])
    iterations = log.iterations[-1] if log.iterations else (train[-1][0] if train else 0)
    speeds = [v for _, v in scalars.get("tokens-per-second", [])]
    test = TEST_RE.findall(text)
    seq, gbs = int(flag(argv, "--seq-length")), int(flag(argv, "--global-batch-size"))
    return {**cell, "iterations": iterations,
            "train_loss": train[-1][1] if train else math.nan,
            "val_loss": valid[-1][1] if valid else math.nan,
            "test_loss": float(test[-1]) if test else math.nan,
            "tokens_seen": iterations * gbs * seq,
            **sample_counts(argv, iterations), **compression_totals(scalars),
            "store_rows_per_dp_rank": store_rows(scalars),
            "tokens_per_s": statistics.mean(speeds[1:] or speeds) if speeds else math.nan,
            "wall_s": wall_s, "stopped_early": " stopping at iteration" in text,
            "train_curve": [[s for s, _ in train], [v for _, v in train]],
            "val_curve": [[s for s, _ in valid], [v for _, v in valid]], "argv": argv}


# --- the grid's reports --------------------------------------------------------------------
def _mb(n: float) -> str:
    """Bytes as MiB, three significant digits."""
    return f"{n / 2**20:.3g}"


def _count(n) -> str:
    """A count as 1234, 12.3k or 1.23M."""
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


def _rows(r: dict) -> str:
    """' (rows 120/118)': AQ-SGD store rows per data-parallel rank, when the cell has a store."""
    rows = r.get("store_rows_per_dp_rank")
    return f" (rows {'/'.join(map(str, rows))})" if rows else ""


def baseline_val(results: list, r: dict):
    """Validation loss of the uncompressed, ordinary-sampling cell of r's model and regime."""
    for b in results:
        if (b["model"], b["regime"], b["method"], b.get("bwd_method") or "none") == \
                (r["model"], r["regime"], "none", "none") and b["p"] in (None, 1, 1.0):
            return b["val_loss"]
    return None


def markdown_table(results: list) -> list:
    """The table's lines (one row per finished cell, grid order)."""
    head = ("| model | regime | method | variant | fwd codec | bwd codec | p | steps | train loss | val loss "
            "| val - base | tokens seen | distinct samples (epochs) | MB sent / boundary | ratio "
            "(fwd / bwd) | tokens/s | ref mem MB (AQ-SGD rows per dp rank) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        base = baseline_val(results, r)
        delta = f"{r['val_loss'] - base:+.3f}" if base is not None else "-"
        method = r["method"] + (f" / {r['bwd_method']}" if r.get("bwd_method") else "")
        method += f" [{r['tag']}]" if r.get("tag") else f" [{r['args']}]" if r.get("args") else ""
        plain = r["method"] == "none" and not r.get("bwd_method")
        codecs = ("-", "-") if plain else (r["fwd_codec"], r["bwd_codec"])
        epochs = f" ({r['epochs']:.2g})" if r.get("epochs") else ""
        p = "1" if r["p"] is None else f"{r['p']:g}"
        lines.append(
            f"| {r['model']} | {r['regime']} | {method} | {variant_label(r)} | {codecs[0]} | {codecs[1]} | {p} "
            f"| {r['iterations']} "
            f"| {r['train_loss']:.3f} | {r['val_loss']:.3f} | {delta} | {_count(r['tokens_seen'])} "
            f"| {_count(r['distinct_samples'])}{epochs} "
            f"| {' / '.join(_mb(b) for b in r['bytes_sent_per_boundary'])} "
            f"| {r['ratio']:.3f} ({r['fwd_ratio']:.3f} / {r['bwd_ratio']:.3f}) | {r['tokens_per_s']:.0f} "
            f"| {_mb(r['ref_memory_bytes'])}{_rows(r)} |")
    return lines


def write_csv(results: list, path: str) -> None:
    """One row per cell, CSV_FIELDS columns (curves and argv stay in result.json)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            per_boundary = " ".join(f"{b:.0f}" for b in r["bytes_sent_per_boundary"])
            rows = " ".join(str(n) for n in r.get("store_rows_per_dp_rank") or [])
            w.writerow({**r, "bytes_sent_per_boundary": per_boundary, "store_rows_per_dp_rank": rows})


def variant_label(r: dict) -> str:
    """The cell's variant and whether a paper defines it (megaclap.compression.variants)."""
    from megaclap.compression.variants import variant
    argv = r.get("argv") or []
    lazy = r["p"] not in (None, 1, 1.0) or int(flag(argv, "--lazy-sampling-period", 1)) > 1
    label, origin = variant(r["method"], r.get("bwd_method"), flag(argv, "--clapping-fc-init", "zero"),
                            flag(argv, "--clapping-fresh-codec"), lazy)
    return f"{label} [{origin}]"


def _label(r: dict) -> str:
    """A cell's legend entry (its model and regime are the plot's)."""
    p = 1 if r["p"] is None else r["p"]
    if r["method"] == "none" and not r.get("bwd_method"):
        return f"none p={p:g}"
    bwd = f"/{r['bwd_method']}" if r.get("bwd_method") else ""
    tag = f" {r['tag']}" if r.get("tag") else ""
    return f"{r['method']}{bwd} {r['fwd_codec']}/{r['bwd_codec']} p={p:g}{tag}"


def _curves(r: dict, xname: str) -> list:
    """[(x, y)] of a cell's train and validation curves; x is the step or the cumulative
    pipeline MiB sent by that step."""
    import numpy as np
    out = []
    for steps, values in (r["train_curve"], r["val_curve"]):
        x = np.asarray(steps, float)
        if xname == "bytes":
            bsteps, cum = r["bytes_curve"]
            x = np.interp(x, [0] + list(bsteps), [0.0] + list(cum)) / 2**20
        out.append((x, np.asarray(values, float)))
    return out


def plot_group(results: list, key: str, out_dir: str) -> list:
    """loss_vs_step_<key>.png and loss_vs_bytes_<key>.png: train and validation loss, one
    line per cell (uncompressed cells thicker), against the step and against the cumulative
    pipeline bytes sent. Curves that diverge leave the top of the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    colors, styles = plt.get_cmap("tab10"), ("-", "--", ":", "-.")
    paths = []
    for xname in ("step", "bytes"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for i, r in enumerate(results):
            plain = r["method"] == "none" and not r.get("bwd_method")
            for ax, (x, y) in zip(axes, _curves(r, xname)):
                ax.plot(x, y, styles[i // 10 % 4], color=colors(i % 10), lw=2.2 if plain else 1.1,
                        label=_label(r))
        for j, (ax, what) in enumerate(zip(axes, ("train loss (log-interval mean)", "validation loss"))):
            firsts = [c[j][1][0] for c in (_curves(r, xname) for r in results) if len(c[j][1])]
            if firsts:
                ax.set_ylim(top=float(np.median(firsts)) + 0.3)
            ax.set_xlabel("step" if xname == "step" else "pipeline MiB sent (all boundaries)")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
        fig.legend(*axes[1].get_legend_handles_labels(), fontsize=7, loc="center left",
                   bbox_to_anchor=(0.75, 0.5))
        fig.suptitle(f"{key}: loss vs {xname}")
        fig.tight_layout(rect=(0, 0, 0.75, 1))
        path = os.path.join(out_dir, f"loss_vs_{xname}_{key}.png")
        fig.savefig(path, dpi=72)
        plt.close(fig)
        paths.append(path)
    return paths


def write_reports(results: list, out_dir: str, title: str = "Ablation") -> list:
    """ablation.csv, ablation.md and plots/ (one pair of PNGs per model and regime)."""
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    csv_path, md_path = os.path.join(out_dir, "ablation.csv"), os.path.join(out_dir, "ablation.md")
    write_csv(results, csv_path)
    groups = defaultdict(list)
    for r in results:
        groups[f"{r['model']}_{r['regime']}"].append(r)
    plots = [p for key, rs in groups.items() for p in plot_group(rs, key, os.path.join(out_dir, "plots"))]
    with open(md_path, "w") as f:
        f.write(f"# {title}\n\n" + "\n".join(markdown_table(results)) + "\n\n")
        f.write("val - base: validation loss minus the uncompressed p=1 cell of the same model and regime. "
                "ratio: payload / raw bytes, both directions. ref mem: peak reference memory "
                "(m, e or the AQ-SGD store) over all boundaries and directions.\n\n")
        f.write("\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots) + "\n")
    return [csv_path, md_path] + plots
