"""Every method accepts every new codec on each direction, and Clapping's fresh-step codec may be
any codec: 3 real PP=2 steps each (gloo), with both ends' state hash-identical after every step
(references m, AQ-SGD stores, warm lowrank factors)."""

import hashlib
import math

import pytest
import torch

from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

NEW = ["hquant:1", "hquant:1:sr", "lowrank:4", "lowrank:4:warm", "topk:0.05:q8", "randk:0.1:q4"]
# each codec once forward and once backward
PAIRS = [(NEW[i], NEW[(i + 1) % len(NEW)]) for i in range(len(NEW))]
FRESH = {"clapping-fu": [("hquant:1", "lowrank:4:warm"), ("lowrank:4:warm", "topk:0.05:q8")],
         "clapping-fc": [("topk:0.05:q8", "hquant:1:sr"), ("randk:0.1:q4", "lowrank:4")]}
STEPS = 3


def _digest(t) -> str:
    if t is None:
        return "none"
    return hashlib.sha1(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _state(tr) -> dict:
    """{(boundary, direction, slot): (role, digest of what both ends must hold alike)}."""
    out = {}
    for (b, d, s), ch in tr.p2p.channels.items():
        sender = (d == "fwd") == (tr.ps.pp_rank == b)
        held = ch.m
        if ch.method == "aqsgd":
            held = ch.store.read(torch.arange(ch.store.num_samples)) if ch.store.num_samples else None
        factors = ",".join(f"{k}:{_digest(v)}" for k, v in sorted(ch.factors.items()))
        out[(b, d, s)] = ("send" if sender else "recv", _digest(held) + "|" + factors)
    return out


def _worker(rank, world, configs):
    runs = []
    for argv in configs:
        tr = make_trainer(rank, world, argv)
        record, losses = [], []
        for _ in range(STEPS):
            out = tr.train_step(tr.data.train.next_batch())
            record.append(_state(tr))
            if tr.ps.is_last_stage:
                losses.append(float(out["loss"]))
        runs.append({"record": record, "losses": losses})
    return runs


def _argv(method: str, fwd: str, bwd: str, fresh: str = None) -> list:
    extra = ["--pipeline-model-parallel-size", "2", "--pp-compression-method", method,
             "--pp-bwd-compression-method", "aqsgd" if method == "aqsgd" else method,
             "--pp-fwd-codec", fwd, "--pp-bwd-codec", bwd, "--lazy-sampling-period", "2"]
    return tiny_args(extra=extra + (["--clapping-fresh-codec", fresh] if fresh else []))


@pytest.mark.parametrize("method", ["direct", "ef", "ef21", "aqsgd", "clapping-fc", "clapping-fu"])
def test_every_new_codec_keeps_both_ends_identical(method):
    configs = [(fwd, bwd, None) for fwd, bwd in PAIRS] + [(d, d, f) for d, f in FRESH.get(method, [])]
    res = run_ranks(_worker, 2, [_argv(method, *c) for c in configs], timeout_s=600)
    for i, config in enumerate(configs):
        for step in range(STEPS):
            seen: dict = {}
            for r in res:
                for key, (role, digest) in r[i]["record"][step].items():
                    seen.setdefault(key, {})[role] = digest
            assert seen, config
            for key, roles in seen.items():
                assert roles.get("send") == roles.get("recv"), f"{method} {config} step {step} {key}: {roles}"
        losses = [loss for r in res for loss in r[i]["losses"]]
        assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), (config, losses)
    if method in ("ef21", "clapping-fc", "clapping-fu", "aqsgd"):  # the comparison saw real state
        assert any(d.split("|")[0] != "none" for r in res for rec in r[0]["record"] for _, d in rec.values())
    warm = [i for i, c in enumerate(configs) if "lowrank:4:warm" in c[:2]]
    assert any("lowrank:4:warm:" in d for i in warm for r in res for _, d in r[i]["record"][-1].values())
