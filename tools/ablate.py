"""Ablate pipeline compression: a grid of real training runs, then a table and plots.

    python tools/ablate.py --grid examples/pretrain_gpt/grids/cpu.yaml --out-dir runs/ablation/cpu

Each cell of the grid (compression method x forward / backward codec x model x lazy-sampling
p x data regime) is one `torchrun` launch of examples/pretrain_gpt/pretrain_gpt.py, built by
examples/pretrain_gpt/pretrain_gpt_distributed.sh (DRY_RUN=1) so a cell runs exactly the flags a
user's launch would. Each cell writes <out-dir>/cells/<name>/{cmd.txt, train.log, tb/,
result.json}; a cell whose result.json exists is skipped, so an interrupted ablation resumes
where it stopped. At the end <out-dir> (or --report-dir) gets ablation.csv, ablation.md and
plots/ (tools/ablate_report.py).

The grid is YAML or JSON (a .json file needs no pyyaml):

    name: cpu
    data: {build: stdlib, vocab_size: 4096, valid_files: 24}    # or {mock: true} or
                                        # {prefix: ..., tokenizer_model: ...} (tools/ablate_data.py)
    launch: {nproc: 2, tp: 1, pp: 2, timeout_s: 3600}
    train: {train_iters: 400, log_interval: 20, eval_interval: 100, eval_iters: 4, seed: 1234}
    models:                             # a config name from examples/pretrain_gpt/configs, or
      tiny: {config: gpt-tiny, num_layers: 2, hidden_size: 64}   # a config plus inline sizes
    regimes:                            # few-epoch (default sampler) / online, with options
      few-epoch: {train_files: 12}      # a small training corpus: several epochs (or its
                                        # own data: {prefix: ...})
      online: {online: true}
    experiments:                        # blocks; a list value is an axis (cartesian product)
      - {model: tiny, regime: [few-epoch, online], method: [ef21, clapping-fu],
         fwd_codec: "topk:0.1", bwd_codec: "quant:8", p: 0.5}

Cell keys: model, regime, method, bwd_method, fwd_codec, bwd_codec, p (lazy-sampling
probability; null = ordinary training), args (extra flags, a string), tag (a name suffix).

Emulated cells (`launch: {emulate: true, links: "200mbit:50ms,1gbit:10ms"}`): each cell is one
process holding all pp stages (--pp-emulate, nproc defaults to tp), so a GPT-size grid runs on one
GPU; with `links` the cell prices those links with the time model and writes
<cell>/timing.json (--timing-json), whose summary result.json carries as `timing` (modeled step
time per link, fresh and repeated steps apart). Timing runs over real links become optional.
Every other key of `train:`, `models:` and `regimes:` becomes a flag (`num_layers: 2` ->
`--num-layers 2`, `online: true` -> `--online`), appended last so it wins.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import ablate_report  # noqa: E402
from tools.ablate_data import REPO, DataPlan  # noqa: E402

LAUNCHER = os.path.join(REPO, "examples", "pretrain_gpt", "pretrain_gpt_distributed.sh")
CELL_KEYS = ("model", "regime", "method", "bwd_method", "fwd_codec", "bwd_codec", "p", "args", "tag")
BUILTIN_REGIMES = {"few-epoch": {}, "online": {"online": True}}
# The launcher's settings that a user's shell might hold: never inherited by a cell.
LAUNCH_ENV = ("CONFIG", "TP", "PP", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR",
              "MASTER_PORT", "RDZV_BACKEND", "RDZV_ID", "DATA_ARGS", "COMPRESSION_ARGS", "PRECISION",
              "TRAIN_ITERS", "CHECKPOINT_PATH", "TENSORBOARD_DIR", "TORCHRUN", "DRY_RUN", "PP_EMULATE",
              "LR_WARMUP_ITERS", "LOG_INTERVAL", "EVAL_INTERVAL", "SAVE_INTERVAL")


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    model: str
    regime: str
    method: str = "none"
    bwd_method: Optional[str] = None
    fwd_codec: str = "identity"
    bwd_codec: str = "identity"
    p: Optional[float] = None
    args: str = ""
    tag: str = ""

    @property
    def name(self) -> str:
        """A file-system-safe name made of the cell's settings."""
        parts = [self.model, self.method + (f"-bwd-{self.bwd_method}" if self.bwd_method else "")]
        if (self.method, self.bwd_method or "none") != ("none", "none"):
            parts += [self.fwd_codec, self.bwd_codec]
        parts += [f"p{1.0 if self.p is None else self.p:g}", self.regime]
        if self.tag or self.args:
            parts.append(self.tag or hashlib.sha1(self.args.encode()).hexdigest()[:6])
        return re.sub(r"[^A-Za-z0-9._-]", "", "_".join(str(x) for x in parts))

    def compression_flags(self) -> list:
        """The cell's --pp-* and --lazy-sampling-prob flags."""
        out = ["--pp-compression-method", self.method]
        if self.bwd_method:
            out += ["--pp-bwd-compression-method", self.bwd_method]
        if self.method != "none":
            out += ["--pp-fwd-codec", self.fwd_codec]
        if (self.bwd_method or self.method) != "none":
            out += ["--pp-bwd-codec", self.bwd_codec]
        if self.p is not None:
            out += ["--lazy-sampling-prob", f"{self.p:g}"]
        return out


# --- the grid ------------------------------------------------------------------------------
def load_grid(path: str) -> dict:
    """A grid from a .json file, or from YAML (anything else)."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            return json.load(f)
        import yaml
        return yaml.safe_load(f)


def expand_cells(grid: dict) -> list:
    """The grid's cells in order, duplicates dropped; list values are axes."""
    models, regimes = list(grid.get("models") or {}), list(grid.get("regimes") or BUILTIN_REGIMES)
    base = {"model": models[0] if models else "gpt-tiny", "regime": regimes[0], **grid.get("defaults", {})}
    cells, seen = [], set()
    for block in grid.get("experiments") or [{}]:
        merged = {**base, **block}
        unknown = set(merged) - set(CELL_KEYS)
        if unknown:
            raise ValueError(f"grid experiment {block}: unknown keys {sorted(unknown)} "
                             f"(allowed: {', '.join(CELL_KEYS)})")
        axes = {k: v if isinstance(v, list) else [v] for k, v in merged.items()}
        for values in itertools.product(*axes.values()):
            cell = Cell(**dict(zip(axes, values)))
            if cell.method == "none" and (cell.bwd_method or "none") == "none":
                cell = Cell(**{**asdict(cell), "fwd_codec": "identity", "bwd_codec": "identity"})
            if cell.name not in seen:
                seen.add(cell.name)
                cells.append(cell)
    return cells


def to_flags(options: dict) -> list:
    """{'num_layers': 2, 'online': True} -> ['--num-layers', '2', '--online']."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, *map(str, value if isinstance(value, list) else [value])]
    return out


# --- one cell ------------------------------------------------------------------------------
def _free_port() -> int:
    """A TCP port free on this machine now (the launch's rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> str:
    """The torchrun next to this Python (a virtual environment's), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return local if os.path.exists(local) else "torchrun"


def launch_env(grid: dict, model: dict, data_flags: list, tb_dir: str) -> dict:
    """Environment for pretrain_gpt_distributed.sh (DRY_RUN=1: print the torchrun command)."""
    launch, train = grid.get("launch", {}), grid.get("train", {})
    nproc = launch.get("nproc", launch.get("tp", 1) if launch.get("emulate") else 2)
    iters = int(model.get("train_iters") or train.get("train_iters", 1000))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(CONFIG=model.get("config", "gpt-tiny"), TP=str(launch.get("tp", 1)),
               PP=str(launch.get("pp", 2)), NNODES="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), TORCHRUN=launch.get("torchrun", _torchrun()),
               DATA_ARGS=" ".join(data_flags), TENSORBOARD_DIR=tb_dir, DRY_RUN="1",
               LR_WARMUP_ITERS=str(max(1, iters // 10)), PP_EMULATE="1" if launch.get("emulate") else "0")
    if nproc != "auto":
        env["NPROC_PER_NODE"] = str(nproc)
        cores = os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(launch.get("omp_threads", max(1, cores // int(nproc)))))
    if "precision" in model:
        env["PRECISION"] = model["precision"] or ""
    return env


def model_options(grid: dict, name: str) -> dict:
    """The grid's `models:` entry (a bare name is a config file), min_lr defaulting to lr / 10."""
    model = dict(grid.get("models", {}).get(name) or {"config": name})
    if "lr" in model and "min_lr" not in model:
        model["min_lr"] = float(model["lr"]) / 10
    return model


def timing_flags(grid: dict, cell_dir: str) -> list:
    """--sim-links and --timing-json <cell>/timing.json when the grid prices links (launch.links)
    or emulates the pipeline (the time model's measurements are what an emulated cell is for)."""
    launch = grid.get("launch", {})
    flags = ["--sim-links", launch["links"]] if launch.get("links") else []
    if flags or launch.get("emulate"):
        flags += ["--timing-json", os.path.join(cell_dir, "timing.json")]
    return flags


def cell_timing(cell_dir: str) -> Optional[dict]:
    """The time model's summary of a finished cell (None without a timing.json): per link the
    modeled step time (all, fresh and repeated steps; medians after the first log interval) and
    the measured step time (single-device when emulated)."""
    path = os.path.join(cell_dir, "timing.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        doc = json.load(f)
    return {"emulated": doc["emulated"], "links": doc["links"], "tokens_per_step": doc["tokens_per_step"],
            **doc["summary"], "path": path}


def cell_command(grid: dict, cell: Cell, plan: DataPlan, tb_dir: str) -> tuple:
    """(argv, env) of one cell's torchrun launch."""
    model = model_options(grid, cell.model)
    regimes = grid.get("regimes") or BUILTIN_REGIMES
    if cell.regime not in regimes:
        raise ValueError(f"cell {cell.name}: regime {cell.regime!r} is not one of {list(regimes)}")
    regime = dict(regimes[cell.regime] or {})
    data_flags = plan.flags(regime)
    if any(re.search(r"\s", f) for f in data_flags + [tb_dir]):
        raise ValueError(f"paths must not contain whitespace: {data_flags} {tb_dir}")
    env = launch_env(grid, model, data_flags, tb_dir)
    dry = subprocess.run(["bash", LAUNCHER], env=env, capture_output=True, text=True, check=True)
    regime.pop("train_files", None)
    regime.pop("data", None)
    sizes = {k: v for k, v in model.items() if k not in ("config", "precision", "args")}
    argv = (shlex.split(dry.stdout) + to_flags(grid.get("train", {})) + to_flags(sizes)
            + shlex.split(model.get("args", "")) + to_flags(regime) + cell.compression_flags()
            + timing_flags(grid, os.path.dirname(tb_dir)) + shlex.split(cell.args))
    env.pop("DRY_RUN")
    return argv, env


def run_command(argv: list, env: dict, log_path: str, timeout_s: float) -> int:
    """Run one launch in its own process group, output to log_path; the group is ended on
    timeout or Ctrl-C. Returns the exit status (124 on timeout)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return 124
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM this launch's process group, SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def read_result(path: str) -> Optional[dict]:
    """A finished cell's result.json, or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_cell(grid: dict, cell: Cell, plan: DataPlan, cells_dir: str, dry_run: bool) -> Optional[dict]:
    """Train one cell (unless its result exists) and return its result dict (None on failure)."""
    cell_dir = os.path.join(cells_dir, cell.name)
    result_path = os.path.join(cell_dir, "result.json")
    if os.path.exists(result_path):
        print(f"ablate: skipped {cell.name} (result exists)", flush=True)
        return read_result(result_path)
    tb_dir = os.path.join(cell_dir, "tb")
    argv, env = cell_command(grid, cell, plan, tb_dir)
    if dry_run:
        print(f"ablate: {cell.name}\n  {shlex.join(argv)}", flush=True)
        return None
    if os.path.isdir(tb_dir):      # an interrupted attempt: start its TensorBoard log afresh
        for f in os.listdir(tb_dir):
            os.remove(os.path.join(tb_dir, f))
    os.makedirs(cell_dir, exist_ok=True)
    with open(os.path.join(cell_dir, "cmd.txt"), "w") as f:
        f.write(f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '')} {shlex.join(argv)}\n")
    start = time.time()
    rc = run_command(argv, env, os.path.join(cell_dir, "train.log"),
                     float(grid.get("launch", {}).get("timeout_s", 3600)))
    wall = time.time() - start
    if rc != 0:
        print(f"ablate: FAILED {cell.name} (exit {rc} after {wall:.0f} s; see "
              f"{os.path.join(cell_dir, 'train.log')})", flush=True)
        return None
    result = ablate_report.summarize_cell(cell_dir, {**asdict(cell), "name": cell.name}, argv, wall)
    result["timing"] = cell_timing(cell_dir)
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)
    print(f"ablate: done {cell.name} in {wall:.0f} s: train loss {result['train_loss']:.4f}, "
          f"val loss {result['val_loss']:.4f}, ratio {result['ratio']:.3f}", flush=True)
    return result


# --- the command line ------------------------------------------------------------------------
def get_args(argv=None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="grid file (.yaml, .yml or .json)")
    parser.add_argument("--out-dir", default=None, help="runs and reports [runs/ablation/<grid name>]")
    parser.add_argument("--report-dir", default=None, help="CSV, markdown and plots [--out-dir]")
    parser.add_argument("--only", nargs="*", default=[],
                        help="run only cells whose name contains one of these substrings")
    parser.add_argument("--list", action="store_true", help="print the cell names and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each cell's command (builds the data) and exit")
    parser.add_argument("--report-only", action="store_true", help="rebuild the reports, run nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run (or skip) every selected cell, then write the reports; 1 if a cell did not finish."""
    args = get_args(argv)
    grid = load_grid(args.grid)
    name = grid.get("name") or os.path.splitext(os.path.basename(args.grid))[0]
    out_dir = os.path.abspath(args.out_dir or os.path.join("runs", "ablation", name))
    cells = [c for c in expand_cells(grid) if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        print("\n".join(c.name for c in cells))
        return 0
    plan = DataPlan(grid.get("data"), os.path.join(out_dir, "data"))
    cells_dir = os.path.join(out_dir, "cells")
    results, failed = [], []
    for i, cell in enumerate(cells):
        if not args.report_only:
            print(f"ablate: [{i + 1}/{len(cells)}] {cell.name}", flush=True)
            res = run_cell(grid, cell, plan, cells_dir, args.dry_run)
        else:
            res = read_result(os.path.join(cells_dir, cell.name, "result.json"))
        (results if res else failed).append(res or cell.name)
    if args.dry_run:
        return 0
    report_dir = os.path.abspath(args.report_dir or out_dir)
    paths = ablate_report.write_reports(results, report_dir, title=f"Ablation `{name}`")
    print(f"ablate: {len(results)} of {len(cells)} cells finished; wrote " + ", ".join(paths))
    if failed:
        print(f"ablate: not finished: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
