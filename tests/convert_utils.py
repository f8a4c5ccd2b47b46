"""Shared by the conversion tests: tiny random HF models, the tools as functions, pipelined logits."""
from __future__ import annotations

import importlib.util
import os

import torch

from megaclap.checkpoint.generate import load_for_inference, pipeline_forward
from megaclap.parallel.state import ParallelState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(rel_path: str):
    """Import a script under tools/ as a module (its main(argv) is the CLI)."""
    path = os.path.join(ROOT, rel_path)
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_config(kind: str, **overrides):
    from transformers import GPT2Config, LlamaConfig
    if kind == "gpt2":
        base = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32, layer_norm_epsilon=1e-4,
                    bos_token_id=None, eos_token_id=None)
        return GPT2Config(**{**base, **overrides})
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100, rope_theta=5000.0, rms_norm_eps=1e-4,
                max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaConfig(**{**base, **overrides})


def hf_model(kind: str, path: str, seed: int = 0, **overrides):
    """A tiny HF causal LM with large random weights (so layout mistakes show), saved to path."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM
    torch.manual_seed(seed)
    cls = GPT2LMHeadModel if kind == "gpt2" else LlamaForCausalLM
    model = cls(hf_config(kind, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1) + (1.0 if "ln" in name or "norm" in name else 0.0))
    model.save_pretrained(path)
    return model


def ids(n: int = 12, b: int = 2, seed: int = 1, vocab: int = 100) -> torch.Tensor:
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


def logits_worker(rank: int, world: int, ckpt: str, tp: int, pp: int, tokens: torch.Tensor):
    """Rank's part of a pipelined forward of the checkpoint; the last stage returns logits."""
    ps = ParallelState(tp, pp, world, rank, torch.device("cpu"))
    stage = load_for_inference(ckpt, ps)
    with torch.no_grad():
        return pipeline_forward(stage, ps, tokens)


def whole_logits(ckpt: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the whole model (shards merged) in this process."""
    with torch.no_grad():
        return load_for_inference(ckpt)(tokens)
