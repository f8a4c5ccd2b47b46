"""Run a few training steps of a tiny GPT under some layout and report what the tests compare."""
from __future__ import annotations

import torch

from megaclap.config import parse_args
from megaclap.parallel.state import ParallelState
from megaclap.training.trainer import Trainer


def tiny_args(flavour: str = "gpt2", layers: int = 4, gbs: int = 8, mbs: int = 2, extra=()) -> list[str]:
    argv = ["--num-layers", str(layers), "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "16", "--max-position-embeddings", "16", "--vocab-size", "96",
            "--make-vocab-size-divisible-by", "8", "--micro-batch-size", str(mbs),
            "--global-batch-size", str(gbs), "--train-iters", "20", "--lr", "1e-3",
            "--use-cpu-initialization", "--mock-data", "--eval-iters", "2", "--seed", "3",
            "--hidden-dropout", "0", "--attention-dropout", "0"]
    if flavour == "llama":
        argv += ["--normalization", "RMSNorm", "--swiglu", "--ffn-hidden-size", "64",
                 "--position-embedding-type", "rope", "--untie-embeddings-and-output-weights",
                 "--disable-bias-linear", "--group-query-attention", "--num-query-groups", "2"]
    return argv + list(extra)


def make_trainer(rank: int, world: int, argv: list[str]) -> Trainer:
    cfg = parse_args(argv).validate(world)
    p = cfg.parallel
    ps = ParallelState(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, world, rank,
                       torch.device("cpu"), p.distributed_timeout_minutes)
    return Trainer(cfg, ps, print_fn=lambda s: None)


def train_worker(rank: int, world: int, argv: list[str], steps: int, evaluate: bool = False) -> dict:
    """Train `steps` steps; return losses (last stage), grads by global name, peak activations."""
    tr = make_trainer(rank, world, argv)
    losses, peaks = [], []
    for _ in range(steps):
        out = tr.train_step(tr.data.train.next_batch())
        losses.append(out["loss"])
        peaks.append(tr.last_stats.peak_in_flight)
    grads = {tr.stage.global_name(n): (p.grad.clone(), getattr(p, "tp_partition", None))
             for n, p in tr.stage.named_parameters()}
    ps = tr.ps
    params = {tr.stage.global_name(n): p.detach().clone() for n, p in tr.stage.named_parameters()}
    return {"params": params, "losses": losses if ps.is_last_stage else None, "grads": grads, "peaks": peaks,
            "tp": (ps.tp_size, ps.tp_rank), "pp_rank": ps.pp_rank, "last": ps.is_last_stage,
            "eval": tr.evaluate() if evaluate else None}
