"""Transformer building blocks: norms, rotary embedding, attention, MLP.

Legend: b batch, s sequence, h hidden, nh query heads (local to the tp rank), ng key/value
groups (local), hd head dim, f ffn width (local). Activations are batch-first (b, s, h).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from megaclap.parallel.state import GroupInfo
from megaclap.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tp_size_rank


def build_norm(kind: str, hidden: int, eps: float) -> nn.Module:
    norm = nn.LayerNorm(hidden, eps=eps) if kind == "LayerNorm" else nn.RMSNorm(hidden, eps=eps)
    for name, p in norm.named_parameters():
        p.tp_partition, p.init_kind = None, ("ones" if name == "weight" else "zeros")
    return norm


class Rotary(nn.Module):
    """RoPE in the rotate-half (GPT-NeoX / HF Llama / Megatron) layout."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self._tables: dict = {}  # (device, dtype) -> (cos, sin), (positions, hd): grown on demand

    def forward(self, seq_len: int, device: torch.device, offset: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions offset..offset+seq_len-1, (s, hd): slices of a cached table."""
        key, end = (torch.device(device), dtype), offset + seq_len
        if key not in self._tables or self._tables[key][0].shape[0] < end:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in training later
                self._tables[key] = self._table(end, key[0], dtype)
        cos, sin = self._tables[key]
        return cos[offset:end], sin[offset:end]

    def _table(self, positions: int, device: torch.device, dtype: torch.dtype):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim))
        t = torch.arange(positions, device=device).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (positions, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (b, heads, s, hd); cos/sin: (s, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention; fused QKV in Megatron's grouped layout, per query group g:
    [q heads of g (nh/ng of them), k_g, v_g], so a contiguous tp shard holds whole groups."""

    def __init__(self, cfg, tp: Optional[GroupInfo]):
        super().__init__()
        size, _ = tp_size_rank(tp)
        self.nh, self.ng = cfg.num_attention_heads // size, cfg.query_groups // size
        self.hd, self.dropout = cfg.head_dim, cfg.attention_dropout
        qkv_out = (cfg.num_attention_heads + 2 * cfg.query_groups) * self.hd
        bias = not cfg.disable_bias_linear
        self.linear_qkv = ColumnParallelLinear(cfg.hidden_size, qkv_out, tp, bias=bias)
        self.linear_proj = RowParallelLinear(cfg.num_attention_heads * self.hd, cfg.hidden_size, tp, bias=bias)
        self.rotary = Rotary(self.hd, cfg.rotary_base) if cfg.position_embedding_type == "rope" else None

    def forward(self, x: torch.Tensor, kv_cache: Optional[dict] = None) -> torch.Tensor:
        b, s, _ = x.shape
        per_group = self.nh // self.ng
        qkv = self.linear_qkv(x).view(b, s, self.ng, per_group + 2, self.hd)
        # split, not indexing: its backward is one concatenation, where three index ops would
        # each zero-fill a qkv-sized gradient, copy into it, and add the three up
        q, k, v = qkv.split([per_group, 1, 1], dim=3)
        q = q.reshape(b, s, self.nh, self.hd).transpose(1, 2)  # (b, nh, s, hd)
        k, v = k.squeeze(3).transpose(1, 2), v.squeeze(3).transpose(1, 2)  # (b, ng, s, hd)
        offset = 0 if kv_cache is None else kv_cache.get("len", 0)
        if self.rotary is not None:
            cos, sin = self.rotary(s, x.device, offset)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            if offset:
                k = torch.cat((kv_cache["k"], k), dim=2)
                v = torch.cat((kv_cache["v"], v), dim=2)
            kv_cache.update(k=k, v=v, len=k.shape[2])
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=(offset == 0), dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.ng != self.nh)
        y = y.transpose(1, 2).reshape(b, s, self.nh * self.hd)
        return self.linear_proj(y)


class MLP(nn.Module):
    """GELU MLP, or SwiGLU with a fused [gate; up] fc1 (stride 2 when sharded)."""

    def __init__(self, cfg, tp: Optional[GroupInfo]):
        super().__init__()
        self.swiglu = cfg.swiglu
        self.gelu_approx = "tanh" if getattr(cfg, "openai_gelu", False) else "none"   # exact GELU, as Megatron
        bias = not cfg.disable_bias_linear
        width = 2 * cfg.ffn if cfg.swiglu else cfg.ffn
        self.linear_fc1 = ColumnParallelLinear(cfg.hidden_size, width, tp, bias=bias,
                                               stride=2 if cfg.swiglu else 1)
        self.linear_fc2 = RowParallelLinear(cfg.ffn, cfg.hidden_size, tp, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_fc1(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approx)
        return self.linear_fc2(h)


class TransformerLayer(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

    def __init__(self, cfg, tp: Optional[GroupInfo]):
        super().__init__()
        self.input_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon)
        self.self_attention = Attention(cfg, tp)
        self.pre_mlp_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.norm_epsilon)
        self.mlp = MLP(cfg, tp)
        self.dropout = cfg.hidden_dropout

    def forward(self, x: torch.Tensor, kv_cache: Optional[dict] = None) -> torch.Tensor:
        x = x + F.dropout(self.self_attention(self.input_layernorm(x), kv_cache), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.pre_mlp_layernorm(x)), self.dropout, self.training)
