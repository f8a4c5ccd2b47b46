"""GPT (GPT-2 and Llama flavours), built as one pipeline stage: a contiguous range of layers.

The first stage holds the embeddings, the last the final norm, output layer and loss. With
tied embeddings and pp > 1 the last stage keeps its own copy of the word embedding
(`output_layer.weight`), initialised identically; its gradient is summed with the first
stage's over the embedding group (megaclap.training.grads).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from megaclap.model.layers import TransformerLayer, build_norm
from megaclap.parallel.collectives import copy_to_tp, gather_from_tp
from megaclap.parallel.state import GroupInfo
from megaclap.parallel.tensor_parallel import (ColumnParallelLinear, VocabParallelEmbedding,
                                               tp_size_rank, vocab_parallel_cross_entropy)

TIED_NAME = "embedding.word_embeddings.weight"


class Embedding(nn.Module):
    def __init__(self, cfg, tp: Optional[GroupInfo], padded_vocab: int):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(padded_vocab, cfg.hidden_size, tp, cfg.vocab_size)
        self.position_embeddings = None
        if cfg.position_embedding_type == "learned_absolute":
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
            self.position_embeddings.weight.tp_partition = None
            self.position_embeddings.weight.init_kind = "normal"
        self.dropout = cfg.hidden_dropout

    def forward(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        x = self.word_embeddings(ids)  # (b, s, h)
        if self.position_embeddings is not None:
            pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)
            x = x + self.position_embeddings(pos)
        return F.dropout(x, self.dropout, self.training)


class Decoder(nn.Module):
    def __init__(self, cfg, tp, start: int, end: int, post_process: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg, tp) for _ in range(start, end))
        self.final_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon) if post_process else None
        self.recompute = cfg.recompute_granularity == "full"

    def forward(self, x: torch.Tensor, kv_caches: Optional[list] = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if kv_caches is not None:
                x = layer(x, kv_caches[i])
            elif self.recompute and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x if self.final_layernorm is None else self.final_layernorm(x)


class GPTStage(nn.Module):
    """Layers [start, end) of a GPT. forward(x, labels): x is token ids (b, s) on the first
    stage, hidden states (b, s, h) elsewhere. Returns hidden states, or on the last stage the
    per-token loss (b, s) when labels are given, else the full logits (b, s, vocab)."""

    def __init__(self, cfg, tp: Optional[GroupInfo], start: int, end: int, pre_process: bool, post_process: bool):
        super().__init__()
        self.cfg, self.tp, self.start, self.end = cfg, tp, start, end
        self.pre_process, self.post_process = pre_process, post_process
        size, _ = tp_size_rank(tp)
        padded = cfg.padded_vocab_size(size)
        self.tied = not cfg.untie_embeddings_and_output_weights
        self.embedding = Embedding(cfg, tp, padded) if pre_process else None
        self.decoder = Decoder(cfg, tp, start, end, post_process)
        self.output_layer = None
        if post_process and not (self.tied and pre_process):
            self.output_layer = ColumnParallelLinear(cfg.hidden_size, padded, tp, bias=False)
            self.output_layer.weight.vocab_rows = cfg.vocab_size

    def output_weight(self) -> torch.Tensor:
        if self.output_layer is not None:
            return self.output_layer.weight
        return self.embedding.word_embeddings.weight

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, kv_caches=None,
                offset: int = 0) -> torch.Tensor:
        if self.pre_process:
            x = self.embedding(x, offset)
        x = self.decoder(x, kv_caches)
        if not self.post_process:
            return x
        logits = F.linear(copy_to_tp(x, self.tp), self.output_weight())  # (b, s, V/tp)
        if labels is not None:
            return vocab_parallel_cross_entropy(logits, labels, self.tp, self.cfg.vocab_size)
        return gather_from_tp(logits, self.tp)[..., : self.cfg.vocab_size]

    def global_name(self, name: str) -> str:
        """Parameter name in the whole model (global layer index; tied copy -> embedding)."""
        if name.startswith("decoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            return f"decoder.layers.{int(idx) + self.start}.{rest}"
        if name == "output_layer.weight" and self.tied:
            return TIED_NAME
        return name

    def is_tied_copy(self, name: str) -> bool:
        """True for the last stage's copy of the tied word embedding (pp > 1)."""
        return self.tied and name == "output_layer.weight"
