"""Tiny shapes shared by the tests (hidden 32-64, 2-4 layers)."""
from __future__ import annotations

import torch

from megaclap.config import ModelConfig
from megaclap.model.gpt import GPTStage
from megaclap.model.init import init_stage, shard


def tiny_model(flavour: str = "gpt2", **overrides) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16,
                max_position_embeddings=16, vocab_size=100, make_vocab_size_divisible_by=8,
                hidden_dropout=0.0, attention_dropout=0.0)
    if flavour == "llama":
        base.update(normalization="RMSNorm", swiglu=True, ffn_hidden_size=64, position_embedding_type="rope",
                    untie_embeddings_and_output_weights=True, disable_bias_linear=True,
                    group_query_attention=True, num_query_groups=2)
    base.update(overrides)
    return ModelConfig(**base)


def build(cfg: ModelConfig, tp=None, start=0, end=None, pre=True, post=True, seed=7) -> GPTStage:
    stage = GPTStage(cfg, tp, start, cfg.num_layers if end is None else end, pre, post)
    size, rank = (1, 0) if tp is None else (tp.size, tp.rank)
    init_stage(stage, seed, size, rank, master=True)
    return stage


def batch(cfg: ModelConfig, b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (b, cfg.seq_length + 1), generator=g)


def local_view(full_grad: torch.Tensor, p: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
    """The shard of a dense tensor that this rank's parameter p corresponds to."""
    partition = getattr(p, "tp_partition", None)
    if partition is not None and partition[0] == 0 and full_grad.shape[0] < p.shape[0] * tp_size:
        # the padded vocabulary grows with tp: padding rows have zero gradient
        pad = torch.zeros(p.shape[0] * tp_size - full_grad.shape[0], *full_grad.shape[1:])
        full_grad = torch.cat([full_grad, pad])
    return shard(full_grad, partition, tp_size, tp_rank)
