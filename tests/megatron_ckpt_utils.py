"""Write a Megatron-LM legacy torch checkpoint from a Hugging Face GPT-2 / Llama model, the way
Megatron-LM lays it out (written from Megatron's documentation and checkpoint layout, not with
megaclap's converter, so the import test compares two independent readings of the format):

    <root>/latest_checkpointed_iteration.txt          "<iteration>" or "release"
    <root>/iter_<7 digits>/ or <root>/release/
        mp_rank_TT/model_optim_rng.pt (pp = 1), mp_rank_TT_PPP/model_optim_rng.pt (pp > 1)
        {"args": Namespace, "checkpoint_version": 3.0, "iteration": N, "model": state dict,
         "optimizer": ..., "opt_param_scheduler": ..., "rng_state": ...}

mcore GPT names, layer indices local to each pipeline stage; QKV rows per query group
[q heads of the group, k, v]; column-parallel weights split along dim 0 (SwiGLU's fc1: gate
and up split separately, each rank [gate_r; up_r]); row-parallel along dim 1; vocabulary
padded to a multiple of make_vocab_size_divisible_by * tp, then split along dim 0. With
te=True the norms carry Transformer Engine's fused names (linear_qkv.layer_norm_weight,
linear_fc1.layer_norm_weight) and every TE module has an `_extra_state` entry.
"""
from __future__ import annotations

import io
import math
import os
import sys
import types
from argparse import Namespace
from contextlib import contextmanager

import torch


def _qkv_rows(q, k, v, ng):
    """[q; k; v] rows -> Megatron's grouped rows: for each group its q heads, its k, its v."""
    qs, ks, vs = q.chunk(ng), k.chunk(ng), v.chunk(ng)
    return torch.cat([torch.cat((qs[g], ks[g], vs[g])) for g in range(ng)])


def megatron_tensors(model, kind):
    """(args dict, {mcore name with global layer index: full tensor}) of an HF model."""
    c, sd = model.config, {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}
    if kind == "gpt2":
        h, heads, n = c.n_embd, c.n_head, c.n_layer
        args = dict(num_layers=n, hidden_size=h, num_attention_heads=heads, ffn_hidden_size=4 * h,
                    max_position_embeddings=c.n_positions, seq_length=c.n_positions, normalization="LayerNorm",
                    norm_epsilon=c.layer_norm_epsilon, position_embedding_type="learned_absolute", swiglu=False,
                    openai_gelu=True, add_bias_linear=True, untie_embeddings_and_output_weights=False,
                    group_query_attention=False, num_query_groups=1, vocab_size=c.vocab_size)
        out["embedding.word_embeddings.weight"] = sd["transformer.wte.weight"]
        out["embedding.position_embeddings.weight"] = sd["transformer.wpe.weight"]
        for i in range(n):
            p, L = f"transformer.h.{i}.", f"decoder.layers.{i}."
            w, b = sd[p + "attn.c_attn.weight"].t(), sd[p + "attn.c_attn.bias"]   # Conv1D: (in, out)
            out[L + "self_attention.linear_qkv.weight"] = _qkv_rows(*w.chunk(3), heads)
            out[L + "self_attention.linear_qkv.bias"] = _qkv_rows(*b.chunk(3), heads)
            for mc, hf in (("input_layernorm", "ln_1"), ("pre_mlp_layernorm", "ln_2")):
                out[L + mc + ".weight"], out[L + mc + ".bias"] = sd[p + hf + ".weight"], sd[p + hf + ".bias"]
            for mc, hf in (("self_attention.linear_proj", "attn.c_proj"), ("mlp.linear_fc1", "mlp.c_fc"),
                           ("mlp.linear_fc2", "mlp.c_proj")):
                out[L + mc + ".weight"], out[L + mc + ".bias"] = sd[p + hf + ".weight"].t(), sd[p + hf + ".bias"]
        out["decoder.final_layernorm.weight"] = sd["transformer.ln_f.weight"]
        out["decoder.final_layernorm.bias"] = sd["transformer.ln_f.bias"]
        return args, out
    h, heads, ng, n = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers
    args = dict(num_layers=n, hidden_size=h, num_attention_heads=heads, ffn_hidden_size=c.intermediate_size,
                max_position_embeddings=c.max_position_embeddings, seq_length=c.max_position_embeddings,
                normalization="RMSNorm", norm_epsilon=c.rms_norm_eps, position_embedding_type="rope",
                rotary_base=int(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]), rotary_percent=1.0,
                swiglu=True, add_bias_linear=False, add_qkv_bias=False,
                untie_embeddings_and_output_weights=not c.tie_word_embeddings,
                group_query_attention=ng != heads, num_query_groups=ng, kv_channels=h // heads)
    out["embedding.word_embeddings.weight"] = sd["model.embed_tokens.weight"]
    for i in range(n):
        p, L = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[L + "self_attention.linear_qkv.weight"] = _qkv_rows(
            *(sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"), ng)
        out[L + "self_attention.linear_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[L + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[L + "pre_mlp_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[L + "mlp.linear_fc1.weight"] = torch.cat((sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]))
        out[L + "mlp.linear_fc2.weight"] = sd[p + "mlp.down_proj.weight"]
    out["decoder.final_layernorm.weight"] = sd["model.norm.weight"]
    if not c.tie_word_embeddings:
        out["output_layer.weight"] = sd["lm_head.weight"]
    return args, out


def _shard(name, t, tp, rank, swiglu):
    """This tp rank's piece of a full tensor, by Megatron's parallel layer kinds."""
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias")) or name in (
            "embedding.word_embeddings.weight", "output_layer.weight"):
        return t.chunk(tp)[rank]
    if name.endswith(("linear_fc1.weight", "linear_fc1.bias")):
        if swiglu:
            gate, up = t.chunk(2)
            return torch.cat((gate.chunk(tp)[rank], up.chunk(tp)[rank]))
        return t.chunk(tp)[rank]
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return t.chunk(tp, dim=1)[rank]
    return t   # norms, row-parallel biases, position embeddings: replicated


def _te_name(local):
    for norm, fused in (("input_layernorm", "self_attention.linear_qkv.layer_norm"),
                        ("pre_mlp_layernorm", "mlp.linear_fc1.layer_norm")):
        for kind in ("weight", "bias"):
            if local.endswith(f"{norm}.{kind}"):
                return local.replace(f"{norm}.{kind}", f"{fused}_{kind}")
    return local


@contextmanager
def megatron_enum():
    """A class importable as megatron.core.transformer.enums.AttnBackend while saving, as real
    Megatron args hold one; the reader must load it without Megatron installed."""
    names = ["megatron", "megatron.core", "megatron.core.transformer", "megatron.core.transformer.enums"]
    mods = {n: types.ModuleType(n) for n in names}
    cls = type("AttnBackend", (), {"__module__": names[-1], "__init__": lambda self, v: setattr(self, "value", v)})
    mods[names[-1]].AttnBackend = cls
    sys.modules.update(mods)
    try:
        yield cls
    finally:
        for n in names:
            sys.modules.pop(n, None)


def padded_tensors(model, kind, tp, pp, divisible_by=128, zero_centered=None, **args):
    """(args, full tensors) as Megatron holds them: vocabulary padded (random rows), and with
    zero_centered (the args name of the "1p" setting) every norm weight stored as weight - 1."""
    a, full = megatron_tensors(model, kind)
    vocab = full["embedding.word_embeddings.weight"].shape[0]
    multiple = divisible_by * tp
    padded = int(math.ceil(vocab / multiple) * multiple)
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if name in full:
            full[name] = torch.cat([full[name], torch.randn(padded - vocab, full[name].shape[1])])
    if zero_centered:
        a[zero_centered] = True
        for name in full:
            if name.endswith("layernorm.weight"):
                full[name] = full[name] - 1.0
    a.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, padded_vocab_size=padded,
             make_vocab_size_divisible_by=divisible_by, hidden_dropout=0.0, attention_dropout=0.0,
             init_method_std=0.02, use_mcore_models=True, **args)
    return a, full


def write_megatron(root, model, kind, tp, pp, te=True, iteration=7, release=False, divisible_by=128,
                   zero_centered=None, **args):
    """Write the HF model as a Megatron-LM tp x pp legacy checkpoint in root."""
    a, full = padded_tensors(model, kind, tp, pp, divisible_by, zero_centered, **args)
    tied = not a["untie_embeddings_and_output_weights"]
    if tied and pp > 1:   # the last stage holds its own copy of the tied embedding
        full["output_layer.weight"] = full["embedding.word_embeddings.weight"]
    a.update(transformer_impl="transformer_engine" if te else "local", ckpt_format="torch",
             iteration=iteration)
    per = a["num_layers"] // pp
    it_dir = os.path.join(root, "release" if release else f"iter_{iteration:07d}")
    for p in range(pp):
        for t in range(tp):
            model_sd = {}
            for name, tensor in full.items():
                if name.startswith("decoder.layers."):
                    _, _, idx, rest = name.split(".", 3)
                    if not p * per <= int(idx) < (p + 1) * per:
                        continue
                    local = f"decoder.layers.{int(idx) - p * per}.{rest}"
                    model_sd[_te_name(local) if te else local] = _shard(name, tensor, tp, t, a["swiglu"]).clone()
                elif name.startswith("embedding.") and p == 0 or not name.startswith("embedding.") and p == pp - 1:
                    model_sd[name] = _shard(name, tensor, tp, t, a["swiglu"]).clone()
            if te:
                for i in range(per):
                    for m in ("self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.core_attention",
                              "mlp.linear_fc1", "mlp.linear_fc2"):
                        model_sd[f"decoder.layers.{i}.{m}._extra_state"] = io.BytesIO(b"fp8 meta")
            sub = os.path.join(it_dir, f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}")
            os.makedirs(sub)
            with megatron_enum() as backend:
                args = Namespace(**a, attention_backend=backend("auto"))
                blob = {"args": args, "checkpoint_version": 3.0, "iteration": iteration, "model": model_sd,
                        "optimizer": {"state": {}}, "opt_param_scheduler": {"num_steps": iteration},
                        "rng_state": [{"random_rng_state": None}]}
                torch.save(blob, os.path.join(sub, "model_optim_rng.pt"))
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("release" if release else str(iteration))
    return a
