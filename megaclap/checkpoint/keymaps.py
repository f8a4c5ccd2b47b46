"""Hugging Face <-> megaclap parameter names: one declarative map per architecture.

A Rule ties one megaclap (full, unsharded, unpadded-vocabulary) tensor to one or more HF
tensors through a named transform; `{}` stands for the layer index. The same table serves
import (HF -> megaclap) and export (megaclap -> HF, the transforms inverted).

Named transforms:
    identity      same tensor
    conv1d        GPT-2's Conv1D stores (in, out): transpose
    c_attn        GPT-2's fused c_attn, Conv1D [q; k; v] -> megaclap's grouped QKV
    qkv           Llama's q_proj / k_proj / v_proj (GQA) -> grouped QKV
    gate_up       Llama's gate_proj / up_proj -> SwiGLU's fused [gate; up]

Grouped QKV (megaclap / Megatron): for each of the ng query groups, the group's nh/ng query
heads, then its key head, then its value head, hd rows each; a contiguous tp shard then
holds whole groups.

Rotary: HF Llama checkpoints already hold q_proj / k_proj rows in the rotate-half layout
(HF's own conversion script permuted Meta's interleaved weights), which is what
megaclap.model.layers.apply_rotary uses, so q/k need no permutation here
(tests/test_convert.py checks the logits against transformers).

Vocabulary padding is applied when shards are written (megaclap.checkpoint.io) with
`pad_vocab`, and removed when they are read with `unpad_vocab`; the full state dict that
moves between loaders and savers always holds exactly vocab_size rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

VOCAB_PARAMS = ("embedding.word_embeddings.weight", "output_layer.weight")


class ConversionError(ValueError):
    """Bad input to a conversion; the message says what was expected."""


@dataclass(frozen=True)
class Rule:
    """megaclap name <- HF names through `transform`; `when` names a ModelConfig condition."""

    megaclap: str
    hf: tuple
    transform: str = "identity"
    when: str = "always"


@dataclass(frozen=True)
class KeyMap:
    """One architecture's rules, plus HF keys that hold no weights (buffers) to ignore."""

    name: str
    rules: tuple
    ignore: tuple = ()


_L = "decoder.layers.{}."

GPT2 = KeyMap("gpt2", rules=(
    Rule("embedding.word_embeddings.weight", ("transformer.wte.weight",)),
    Rule("embedding.position_embeddings.weight", ("transformer.wpe.weight",)),
    Rule(_L + "input_layernorm.weight", ("transformer.h.{}.ln_1.weight",)),
    Rule(_L + "input_layernorm.bias", ("transformer.h.{}.ln_1.bias",)),
    Rule(_L + "self_attention.linear_qkv.weight", ("transformer.h.{}.attn.c_attn.weight",), "c_attn"),
    Rule(_L + "self_attention.linear_qkv.bias", ("transformer.h.{}.attn.c_attn.bias",), "c_attn"),
    Rule(_L + "self_attention.linear_proj.weight", ("transformer.h.{}.attn.c_proj.weight",), "conv1d"),
    Rule(_L + "self_attention.linear_proj.bias", ("transformer.h.{}.attn.c_proj.bias",)),
    Rule(_L + "pre_mlp_layernorm.weight", ("transformer.h.{}.ln_2.weight",)),
    Rule(_L + "pre_mlp_layernorm.bias", ("transformer.h.{}.ln_2.bias",)),
    Rule(_L + "mlp.linear_fc1.weight", ("transformer.h.{}.mlp.c_fc.weight",), "conv1d"),
    Rule(_L + "mlp.linear_fc1.bias", ("transformer.h.{}.mlp.c_fc.bias",)),
    Rule(_L + "mlp.linear_fc2.weight", ("transformer.h.{}.mlp.c_proj.weight",), "conv1d"),
    Rule(_L + "mlp.linear_fc2.bias", ("transformer.h.{}.mlp.c_proj.bias",)),
    Rule("decoder.final_layernorm.weight", ("transformer.ln_f.weight",)),
    Rule("decoder.final_layernorm.bias", ("transformer.ln_f.bias",)),
    Rule("output_layer.weight", ("lm_head.weight",), when="untied"),
), ignore=(r"\.attn\.bias$", r"\.attn\.masked_bias$"))

LLAMA = KeyMap("llama", rules=(
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
    Rule(_L + "input_layernorm.weight", ("model.layers.{}.input_layernorm.weight",)),
    Rule(_L + "self_attention.linear_qkv.weight",
         tuple(f"model.layers.{{}}.self_attn.{x}_proj.weight" for x in "qkv"), "qkv"),
    Rule(_L + "self_attention.linear_proj.weight", ("model.layers.{}.self_attn.o_proj.weight",)),
    Rule(_L + "pre_mlp_layernorm.weight", ("model.layers.{}.post_attention_layernorm.weight",)),
    Rule(_L + "mlp.linear_fc1.weight",
         ("model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"), "gate_up"),
    Rule(_L + "mlp.linear_fc2.weight", ("model.layers.{}.mlp.down_proj.weight",)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
    Rule("output_layer.weight", ("lm_head.weight",), when="untied"),
), ignore=(r"\.rotary_emb\.inv_freq$",))

KEYMAPS = {"gpt2": GPT2, "llama": LLAMA}


# --- transforms: (to_megaclap(list of HF tensors, cfg) -> tensor, to_hf(tensor, cfg) -> list) ---
def _t(x: torch.Tensor) -> torch.Tensor:
    return x.t().contiguous() if x.ndim == 2 else x


def _group_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg) -> torch.Tensor:
    """[q; k; v] (rows: nh*hd, ng*hd, ng*hd) -> grouped layout, along dim 0 (weight or bias)."""
    ng, hd = cfg.query_groups, cfg.head_dim
    rest = q.shape[1:]
    q = q.reshape(ng, -1, hd, *rest)
    k, v = k.reshape(ng, 1, hd, *rest), v.reshape(ng, 1, hd, *rest)
    return torch.cat((q, k, v), dim=1).reshape(-1, *rest)


def _ungroup_qkv(t: torch.Tensor, cfg) -> list[torch.Tensor]:
    """Grouped QKV -> [q, k, v] (contiguous), the inverse of _group_qkv."""
    ng, hd, per = cfg.query_groups, cfg.head_dim, cfg.num_attention_heads // cfg.query_groups
    rest = t.shape[1:]
    g = t.reshape(ng, per + 2, hd, *rest)
    q = g[:, :per].reshape(-1, *rest)
    return [q.contiguous(), g[:, per].reshape(-1, *rest).contiguous(), g[:, per + 1].reshape(-1, *rest).contiguous()]


def _c_attn_in(xs, cfg):
    qkv = _t(xs[0])
    n_q, n_kv = cfg.num_attention_heads * cfg.head_dim, cfg.query_groups * cfg.head_dim
    return _group_qkv(*qkv.split([n_q, n_kv, n_kv]), cfg)


def _c_attn_out(t, cfg):
    return [_t(torch.cat(_ungroup_qkv(t, cfg)))]


TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "identity": (lambda xs, cfg: xs[0], lambda t, cfg: [t]),
    "conv1d": (lambda xs, cfg: _t(xs[0]), lambda t, cfg: [_t(t)]),
    "c_attn": (_c_attn_in, _c_attn_out),
    "qkv": (lambda xs, cfg: _group_qkv(*xs, cfg), _ungroup_qkv),
    "gate_up": (lambda xs, cfg: torch.cat(xs), lambda t, cfg: [c.contiguous() for c in t.chunk(2)]),
}


# --- vocabulary padding (used by io when writing / reading shards) ------------------------------
def pad_vocab(t: torch.Tensor, padded: int, name: str = "vocabulary") -> torch.Tensor:
    """Append zero rows up to `padded` (a multiple of make_vocab_size_divisible_by * tp)."""
    if t.shape[0] > padded:
        raise ConversionError(f"{name}: vocabulary of {t.shape[0]} rows is larger than the padded size {padded}; "
                              "raise --make-vocab-size-divisible-by")
    return torch.cat([t, t.new_zeros(padded - t.shape[0], *t.shape[1:])]) if t.shape[0] < padded else t


def unpad_vocab(t: torch.Tensor, vocab_size: int, name: str = "vocabulary") -> torch.Tensor:
    """Drop padding rows, keeping the first vocab_size."""
    if vocab_size > t.shape[0]:
        raise ConversionError(f"{name}: vocab_size {vocab_size} is larger than the padded size {t.shape[0]} "
                              "stored in the checkpoint")
    return t[:vocab_size]


# --- applying a map ---------------------------------------------------------------------------
def expand(keymap: KeyMap, cfg) -> list[Rule]:
    """The map's rules that apply to cfg, with `{}` replaced by each layer index."""
    untied = cfg.untie_embeddings_and_output_weights
    out = []
    for r in keymap.rules:
        if r.when == "untied" and not untied:
            continue
        layers = range(cfg.num_layers) if "{}" in r.megaclap else [None]
        for i in layers:
            fill = (lambda s: s.format(i)) if i is not None else (lambda s: s)
            out.append(Rule(fill(r.megaclap), tuple(fill(h) for h in r.hf), r.transform, r.when))
    return out


def is_ignored(keymap: KeyMap, key: str) -> bool:
    return any(re.search(p, key) for p in keymap.ignore)


def expected_hf_shapes(keymap: KeyMap, cfg, mc_shapes: dict) -> dict:
    """HF name -> shape, derived by running each export transform on meta tensors."""
    shapes = {}
    for r in expand(keymap, cfg):
        outs = TRANSFORMS[r.transform][1](torch.empty(mc_shapes[r.megaclap], device="meta"), cfg)
        shapes.update({h: tuple(o.shape) for h, o in zip(r.hf, outs)})
    return shapes


def hf_to_megaclap(keymap: KeyMap, cfg, hf: dict, mc_shapes: dict, source: str = "checkpoint") -> dict:
    """Map an HF state dict to megaclap full names, checking keys and shapes first."""
    expected = expected_hf_shapes(keymap, cfg, mc_shapes)
    missing = sorted(k for k in expected if k not in hf)
    if missing:
        raise ConversionError(f"{source}: missing keys for a {keymap.name} model with {cfg.num_layers} layers: "
                              f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    tied_head = "lm_head.weight" if not cfg.untie_embeddings_and_output_weights else None
    unexpected = sorted(k for k in hf if k not in expected and k != tied_head and not is_ignored(keymap, k))
    if unexpected:
        raise ConversionError(f"{source}: unexpected keys for a {keymap.name} model with {cfg.num_layers} layers: "
                              f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for k, shape in expected.items():
        if tuple(hf[k].shape) != shape:
            raise ConversionError(f"{source}: {k} has shape {tuple(hf[k].shape)}, expected {shape} from config.json")
    return {r.megaclap: TRANSFORMS[r.transform][0]([hf[h] for h in r.hf], cfg) for r in expand(keymap, cfg)}


def megaclap_to_hf(keymap: KeyMap, cfg, full: dict, mc_shapes: dict) -> dict:
    """Map a full megaclap state dict to HF names (the transforms inverted)."""
    missing = sorted(set(mc_shapes) - set(full))
    unexpected = sorted(set(full) - set(mc_shapes))
    if missing or unexpected:
        raise ConversionError(f"megaclap state dict does not match a {keymap.name} model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    out = {}
    for r in expand(keymap, cfg):
        t = full[r.megaclap]
        if tuple(t.shape) != tuple(mc_shapes[r.megaclap]):
            raise ConversionError(f"{r.megaclap} has shape {tuple(t.shape)}, expected {tuple(mc_shapes[r.megaclap])}")
        out.update(zip(r.hf, TRANSFORMS[r.transform][1](t, cfg)))
    return out
