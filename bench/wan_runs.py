"""How the WAN speedrun gets one run's record: the only part that knows how runs are launched.

A record is a plain dict; bench/wan_speedrun.py's analysis reads nothing else:

    config, seed, iters            configuration name, --seed, schedule length in steps
    val_curve                      [[steps], [losses]] on the fixed validation tokens
    fresh                          [bool] * iters: the realised sequence of fresh / repeated steps
    step_s                         {link: {"fresh": s, "repeat": s | None, "steady": bool}}:
                                   steady-state seconds per step of each kind over that link
    bytes_per_token                {"fwd": B, "bwd": B} payload bytes per token per boundary
    rel_err                        {"fwd": {"fresh": e, "repeat": e}, "bwd": ...} compression error
    valid_tokens, tokens_per_s, tflops, mfu

TorchrunBackend (today) trains tools/ablate.py cells (torchrun, one process per stage) and
times each configuration over each link in a separate run with the p2p layer's simulated link
(or, with Preset.time_in_loss_runs, in the loss runs themselves, first link only). A backend for
the one-process emulated pipeline gives the same record from one run whose modelled step
times cover every link; bench/wan_speedrun.py takes any object with this `record` method.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import statistics

from tools import ablate, ablate_report
from tools.ablate_data import DataPlan

from bench.wan_configs import CONFIGS, Preset
from bench.wan_fit import kind_step_times

REL_ERR = re.compile(r"compression/boundary(\d+)/(fwd|bwd)/(rel_err|payload_bytes)")


def eval_schedule(iters: int, preset: Preset) -> str:
    """--eval-interval-schedule: every eval_coarse steps, then every eval_fine steps from about
    fine_from x the run's own steps (where its decayed schedule meets the targets), aligned so
    that its last step is evaluated."""
    fine = preset.eval_fine
    start = iters - fine * ((iters - int(preset.fine_from * iters)) // fine)
    return f"0:{preset.eval_coarse} {start}:{fine}"


def fresh_mask(seed: int, p, iters: int) -> list:
    from megaclap.data.samplers import LazySchedule
    return LazySchedule(seed, p).fresh_mask(0, iters).tolist()


class TorchrunBackend:
    """Records from tools/ablate.py cells under <out_dir>/cells (finished cells are reused)."""

    def __init__(self, preset: Preset, out_dir: str, data: dict = None, base_seed: int = 1234):
        self.preset, self.base_seed = preset, base_seed
        self.data = data or preset.data
        self.plan = DataPlan(self.data, os.path.join(out_dir, "data"))
        self.cells_dir = os.path.join(out_dir, "cells")
        model = dict(preset.model)
        key = "m" + hashlib.sha1(json.dumps([model, preset.pp, self.data, preset.args], sort_keys=True)
                                 .encode()).hexdigest()[:6]
        self.model = key
        self.grid = {"name": "wan_speedrun", "launch": {"nproc": preset.pp, "tp": 1, "pp": preset.pp,
                                                        "timeout_s": 7200},
                     "train": {"train_iters": preset.train_iters, "eval_iters": preset.eval_iters},
                     "models": {key: model}, "regimes": {"default": {}}}
        self._timing = {}

    # --- runs -------------------------------------------------------------------------------
    def _cell(self, name: str, tag: str, p, args: str) -> ablate.Cell:
        c = CONFIGS[name]
        return ablate.Cell(model=self.model, regime="default", method=c.method, bwd_method=c.bwd_method,
                           fwd_codec=c.fwd, bwd_codec=c.bwd, p=p, tag=tag,
                           args=" ".join(x for x in (c.extra, self.preset.args, args) if x))

    def _run(self, cell: ablate.Cell) -> tuple:
        res = ablate.run_cell(self.grid, cell, self.plan, self.cells_dir, dry_run=False)
        if res is None:
            log = os.path.join(self.cells_dir, cell.name, "train.log")
            raise RuntimeError(f"wan_speedrun: run {cell.name} failed; see {log}")
        return res, ablate_report.read_scalars(os.path.join(self.cells_dir, cell.name, "tb"))

    @staticmethod
    def _link_args(link) -> str:
        return f"--sim-link-bandwidth {link[0]} --sim-link-latency {link[1]}"

    def _step_times(self, scalars: dict, fresh: list) -> dict:
        """{"fresh", "repeat", "steady"} from a run logged every step."""
        pr = self.preset
        times = [v for _, v in sorted(scalars.get("iteration-time", []))]
        kinds = kind_step_times(times, fresh[:len(times)], pr.timing_warmup, window=pr.window,
                                count=pr.windows, tol=pr.tol)
        got = {k: v for k, v in kinds.items() if v is not None}
        if "fresh" not in got:
            raise RuntimeError(f"wan_speedrun: {len(times)} logged step times hold no whole window of "
                               f"{pr.window} fresh steps after {pr.timing_warmup} warm-up steps")
        return {"fresh": got["fresh"]["s"], "repeat": got["repeat"]["s"] if "repeat" in got else None,
                "steady": all(v["steady"] for v in got.values()), "kinds": kinds}

    def _timed(self, name: str, link_name: str) -> dict:
        """Step times of a configuration over one link, from a separate timing run shared by
        every configuration with the same timing key."""
        c, pr = CONFIGS[name], self.preset
        key = (c.timing_key(), link_name)
        if key not in self._timing:
            p = 0.5 if c.p is not None else None
            link = pr.links[link_name]
            iters = pr.timing_iters
            args = (f"{self._link_args(link)} --train-iters {iters} --log-interval 1 --eval-interval "
                    f"{iters + 1} --seed {self.base_seed} --lr-warmup-iters {max(1, pr.train_iters // 10)}")
            tag = f"{name}-time-{link[0]}-{link[1]}"
            _, scalars = self._run(self._cell(name, tag, p, args))
            self._timing[key] = self._step_times(scalars, fresh_mask(self.base_seed, p, iters))
        return self._timing[key]

    def record(self, name: str, seed: int, iters: int) -> dict:
        """The record of configuration `name` trained for `iters` steps with `seed`."""
        c, pr = CONFIGS[name], self.preset
        first = next(iter(pr.links))
        args = (f"--seed {seed} --train-iters {iters} --full-validation --eval-interval-schedule "
                f"{eval_schedule(iters, pr)} --eval-iters {pr.eval_iters} "
                f"--lr-warmup-iters {max(1, pr.train_iters // 10)} --log-interval "
                f"{1 if pr.time_in_loss_runs else 10}")
        if pr.time_in_loss_runs:
            args += " " + self._link_args(pr.links[first])
        res, scalars = self._run(self._cell(name, f"{name}-s{seed}-L{iters}", c.p, args))
        fresh = fresh_mask(seed, c.p, iters)
        step_s = {first: self._step_times(scalars, fresh)} if pr.time_in_loss_runs else \
            {link: self._timed(name, link) for link in pr.links}
        tflops = [v for _, v in scalars.get("throughput", [])][1:]
        return {"config": name, "seed": seed, "iters": iters, "val_curve": res["val_curve"], "fresh": fresh,
                "step_s": step_s, **wire_stats(scalars, fresh, res["tokens_seen"], pr.pp),
                "valid_tokens": self.valid_tokens(res["argv"]), "tokens_per_s": res["tokens_per_s"],
                "tflops": statistics.fmean(tflops) if tflops else None,
                "mfu": statistics.fmean(tflops) / pr.peak_tflops if tflops and pr.peak_tflops else None}

    def valid_tokens(self, argv: list) -> int:
        """Tokens one --full-validation evaluation scores (whole global batches of the split)."""
        flag = ablate_report.flag
        gbs, seq = int(flag(argv, "--global-batch-size")), int(flag(argv, "--seq-length"))
        if "--mock-data" in argv:
            return int(flag(argv, "--eval-iters")) * gbs * seq
        from megaclap.data.gpt_dataset import build_split_dataset
        prefix = ablate_report.flag_values(argv, "--data-path")[-1]
        ds = build_split_dataset(prefix, flag(argv, "--split", "949,50,1"), 1, seq, self.base_seed,
                                 shuffle=False)
        return len(ds) // gbs * gbs * seq


def wire_stats(scalars: dict, fresh: list, tokens: int, pp: int) -> dict:
    """Payload bytes per token per boundary and mean relative error of fresh and of repeated
    steps, per direction. Errors are measured on log steps; step i's kind is fresh[i - 1]."""
    sent, errs = {"fwd": 0.0, "bwd": 0.0}, {d: {"fresh": [], "repeat": []} for d in ("fwd", "bwd")}
    for tag, points in scalars.items():
        m = REL_ERR.fullmatch(tag)
        if not m:
            continue
        d = m.group(2)
        if m.group(3) == "payload_bytes":
            sent[d] += sum(v for _, v in points)
            continue
        for step, v in points:
            errs[d]["fresh" if fresh[min(step, len(fresh)) - 1] else "repeat"].append(v)
    return {"bytes_per_token": {d: sent[d] / tokens / max(1, pp - 1) for d in sent},
            "rel_err": {d: {k: statistics.fmean(v) if v else None for k, v in kinds.items()}
                        for d, kinds in errs.items()}}
