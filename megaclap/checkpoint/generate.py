"""Autoregressive generation from a megaclap checkpoint, in its tp x pp layout or whole.

Each step runs the new tokens through the pipeline with a per-layer KV cache: the first
stage embeds them, every stage sends its hidden states (1, s, h) to the next with
torch.distributed send/recv, the last stage picks the next token from the full logits
(identical on every tp rank, so seeded sampling agrees), and broadcasts it back along the
pipeline group. At world size 1 the whole model is loaded (shards merged) in one stage.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist

from megaclap.checkpoint import io
from megaclap.config import ModelConfig
from megaclap.model.gpt import GPTStage
from megaclap.checkpoint.format import RESHARD_HINT, CheckpointError, iter_dir, rank_dir


def load_for_inference(root: str, pstate=None, device: Optional[torch.device] = None) -> GPTStage:
    """This rank's stage of the checkpoint in root (pstate's layout), or the whole model without pstate."""
    device = device or (pstate.device if pstate is not None else torch.device("cpu"))
    if pstate is None or pstate.world_size == 1:
        loaded = io.load_checkpoint(root)
        cfg, n = loaded.cfg, loaded.cfg.num_layers
        stage = GPTStage(cfg, None, 0, n, True, True)
        stage.load_state_dict(io.shard_state(loaded.full, cfg, 1, 0, 0, n, True, True))
        return stage.to(device).eval()
    it, _ = io.locate(root)
    path = os.path.join(iter_dir(root, it), rank_dir(pstate.tp_rank, pstate.pp_rank, pstate.pp_size),
                        io.MODEL_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint was saved with another layout; {RESHARD_HINT}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    layout = state["layout"]
    if (layout["tensor_model_parallel_size"], layout["pipeline_model_parallel_size"]) != (pstate.tp_size, pstate.pp_size):
        raise CheckpointError(f"{path} has tp={layout['tensor_model_parallel_size']} "
                              f"pp={layout['pipeline_model_parallel_size']}, this run tp={pstate.tp_size} "
                              f"pp={pstate.pp_size}; {RESHARD_HINT}")
    cfg = ModelConfig(**state["args"]["model"])
    start, end = layout["layers"]
    stage = GPTStage(cfg, pstate.tp, start, end, pstate.is_first_stage, pstate.is_last_stage)
    stage.load_state_dict(state["model"])
    return stage.to(device).eval()


def checkpoint_layout(root: str) -> tuple[int, int]:
    """(tp, pp) of the checkpoint in root, read from its first shard."""
    _, path = io.locate(root)
    layout = torch.load(path, map_location="cpu", weights_only=False)["layout"]
    return layout["tensor_model_parallel_size"], layout["pipeline_model_parallel_size"]


def sample_token(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float,
                 generator: torch.Generator) -> int:
    """Next token from (vocab,) logits: argmax, or nucleus sampling at temperature."""
    logits = logits.float().cpu()
    if greedy or temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def pipeline_forward(stage: GPTStage, pstate, ids: torch.Tensor, caches: Optional[list] = None,
                     pos: int = 0) -> Optional[torch.Tensor]:
    """ids (b, s) through this stage, hidden states passed down the pipeline; the last stage
    returns the logits (b, s, vocab), other stages None. Call on every rank of the model."""
    pipelined = pstate is not None and pstate.pp_size > 1
    if stage.pre_process:
        x = ids
    else:
        p = next(stage.parameters())
        x = torch.empty(*ids.shape, stage.cfg.hidden_size, dtype=p.dtype, device=p.device)
        dist.recv(x, src=pstate.prev_rank)
    out = stage(x, kv_caches=caches, offset=pos)
    if pipelined and not stage.post_process:
        dist.send(out.contiguous(), dst=pstate.next_rank)
        return None
    return out


@torch.no_grad()
def generate(stage: GPTStage, prompt: list, max_new_tokens: int, pstate=None, greedy: bool = True,
             temperature: float = 1.0, top_p: float = 1.0, eod: Optional[int] = None, seed: int = 0) -> list:
    """New token ids after prompt (every rank returns the same list). Call on every rank."""
    cfg = stage.cfg
    if not prompt or not all(0 <= t < cfg.vocab_size for t in prompt):
        raise ValueError(f"--prompt {prompt[:8]}: expected a non-empty list of token ids in [0, {cfg.vocab_size}) "
                         "(check --tokenizer-type / --tokenizer-model)")
    device = next(stage.parameters()).device
    limit = (cfg.max_position_embeddings or cfg.seq_length) if cfg.position_embedding_type == "learned_absolute" else None
    if limit is not None and len(prompt) > limit:
        raise ValueError(f"--prompt is {len(prompt)} tokens, longer than the model's position table "
                         f"({limit} learned positions): shorten --prompt")
    generator = torch.Generator().manual_seed(seed)
    caches = [{} for _ in stage.decoder.layers]
    ids, pos, new = torch.tensor([prompt], device=device), 0, []
    for _ in range(max_new_tokens):
        if limit is not None and pos + ids.shape[1] > limit:
            break  # learned positions end here
        logits = pipeline_forward(stage, pstate, ids, caches, pos)
        token = torch.zeros(1, dtype=torch.long, device=device)
        if stage.post_process:
            token[0] = sample_token(logits[0, -1], greedy, temperature, top_p, generator)
        if pstate is not None and pstate.pp_size > 1:
            dist.broadcast(token, src=pstate.pp.ranks[-1], group=pstate.pp.group)
        pos += ids.shape[1]
        new.append(int(token))
        if eod is not None and new[-1] == eod:
            break
        ids = token.view(1, 1)
    return new
