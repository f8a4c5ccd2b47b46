"""Write a Megatron-LM `torch_dist` checkpoint from a Hugging Face model with
torch.distributed.checkpoint, laid out as Megatron's dist_checkpointing saves it (from its
source: strategies/torch.py, transformer_block.py, mlp.py), not with megaclap's reader:

    <root>/latest_checkpointed_iteration.txt
    <root>/iter_<7 digits>/.metadata, __<rank>_0.distcp (one per rank), metadata.json
        common_state/shard_0_1     bytes: torch.save([{"args": Namespace, "iteration": N, ...}])
                                   (common_pt=True: a common.pt file instead, older Megatron)
        decoder.layers.<name>      one global tensor [num_layers, ...] per layer parameter
                                   (per_layer=True: decoder.layers.<i>.<name>, fc1 as <name>_w/_v)
        embedding.*, decoder.final_layernorm.*, output_layer.weight (untied only)
        *._extra_state/shard_*, rng_state/shard_*   bytes, not weights

tp x pp ranks (fork + gloo) each save, as torch ShardedTensor chunks, the parts of the global
tensors they hold in Megatron: column-parallel rows (QKV, fc1, vocabulary) and row-parallel
columns (proj, fc2) by tp rank, SwiGLU's fc1 as gate chunk r at r and up chunk r at tp + r of
[gate; up]; replicated tensors (norms, row-parallel biases, position embeddings) by tp rank 0.
"""
from __future__ import annotations

import io
import json
import os
from argparse import Namespace

import torch

from tests.dist import run_ranks
from tests.megatron_ckpt_utils import _te_name, megatron_enum, padded_tensors

COLUMN = ("linear_qkv.weight", "linear_qkv.bias", "embedding.word_embeddings.weight",
          "output_layer.weight")
ROW = ("linear_proj.weight", "linear_fc2.weight")


def _pieces(name: str, t: torch.Tensor, tp: int, rank: int, swiglu: bool) -> list:
    """[(offsets, tensor)] of the global tensor t that this tp rank saves."""
    zeros = [0] * t.ndim
    if name.endswith(("linear_fc1.weight", "linear_fc1.bias")):
        if not swiglu:
            chunk = t.chunk(tp)[rank]
            return [([rank * len(chunk)] + zeros[1:], chunk)]
        gate, up = (h.chunk(tp)[rank] for h in t.chunk(2))
        return [([rank * len(gate)] + zeros[1:], gate), ([(tp + rank) * len(gate)] + zeros[1:], up)]
    if name.endswith(COLUMN):
        chunk = t.chunk(tp)[rank]
        return [([rank * len(chunk)] + zeros[1:], chunk)]
    if name.endswith(ROW):
        chunk = t.chunk(tp, dim=1)[rank]
        return [([0, rank * chunk.shape[1]], chunk)]
    return [(zeros, t)] if rank == 0 else []


def _entries(full: dict, a: dict, t: int, p: int, tp: int, pp: int, te: bool, per_layer: bool) -> dict:
    """{key: (global shape, [(offsets, local tensor)])} this rank holds, for every key of the model."""
    layers, per = a["num_layers"], a["num_layers"] // pp
    mine = range(p * per, (p + 1) * per)
    out: dict = {}
    for name, tensor in sorted(full.items()):
        if not name.startswith("decoder.layers."):
            holder = p == 0 if name.startswith("embedding.") else p == pp - 1
            pieces = _pieces(name, tensor, tp, t, a["swiglu"]) if holder else []
            out[name] = (tuple(tensor.shape), pieces)
            continue
        _, _, i, rest = name.split(".", 3)
        i, key = int(i), _te_name(rest) if te else rest
        pieces = _pieces(rest, tensor, tp, t, a["swiglu"]) if i in mine else []
        if not per_layer:
            shape = (layers,) + tuple(tensor.shape)
            entry = out.setdefault(f"decoder.layers.{key}", (shape, []))
            entry[1].extend(([i] + off, piece.unsqueeze(0)) for off, piece in pieces)
        elif a["swiglu"] and rest == "mlp.linear_fc1.weight":   # singleton shards: gate _w, up _v
            half = (tensor.shape[0] // 2,) + tuple(tensor.shape[1:])
            for k, suffix in enumerate("wv"):
                local = [([t * len(piece)] + off[1:], piece) for off, piece in pieces[k:k + 1]]
                out[f"decoder.layers.{i}.{key}_{suffix}"] = (half, local)
        else:
            out[f"decoder.layers.{i}.{key}"] = (tuple(tensor.shape), pieces)
    return out


def _BytesAsIs():
    """A save planner that writes BytesIO entries as they are, as Megatron's MCoreSavePlanner does
    (torch's default planner torch.save's them once more)."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    class BytesAsIs(DefaultSavePlanner):
        def transform_object(self, write_item, object):
            return object
    return BytesAsIs()


def _worker(rank, world, it_dir, a, full, tp, pp, te, per_layer, common_pt):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed._shard.sharded_tensor import Shard, ShardMetadata, init_from_local_shards
    t, p = rank % tp, rank // tp   # Megatron's rank order tp-dp-pp, dp = 1
    state = {}
    for key, (shape, pieces) in _entries(full, a, t, p, tp, pp, te, per_layer).items():
        shards = [Shard(x.contiguous().clone(),
                        ShardMetadata(list(off), list(x.shape), f"rank:{rank}/cpu"))
                  for off, x in pieces]
        state[key] = init_from_local_shards(shards, *shape)
    layers = a["num_layers"]
    if te:   # Transformer Engine's fp8 metadata: bytes, no weights
        for i in range(p * layers // pp, (p + 1) * layers // pp):
            key = f"decoder.layers.self_attention.linear_qkv._extra_state/shard_{i}.{t}_{layers}.{tp}"
            state[key] = io.BytesIO(b"fp8 meta")
    state[f"rng_state/shard_{p}.{t}_{pp}.{tp}"] = io.BytesIO(b"rng")
    with megatron_enum() as backend:
        common = {"args": Namespace(**a, attention_backend=backend("auto")), "iteration": a["iteration"],
                  "checkpoint_version": 3.0}
        if rank == 0 and common_pt:
            torch.save(common, os.path.join(it_dir, "common.pt"))
        elif rank == 0:
            state["optimizer.state.step"] = torch.tensor(3.0)   # not a model tensor: not read
            buffer = io.BytesIO()
            torch.save([common], buffer)
            buffer.seek(0)
            state["common_state/shard_0_1"] = buffer
    dcp.save(state, storage_writer=dcp.FileSystemWriter(it_dir), planner=_BytesAsIs())
    dist.barrier()
    return True


def write_megatron_dist(root, model, kind, tp, pp, te=True, iteration=7, per_layer=False,
                        common_pt=False, zero_centered=None, **args):
    """Write the HF model as a Megatron-LM tp x pp torch_dist checkpoint in root; returns the args."""
    a, full = padded_tensors(model, kind, tp, pp, zero_centered=zero_centered, **args)
    a.update(transformer_impl="transformer_engine" if te else "local", ckpt_format="torch_dist",
             iteration=iteration)
    it_dir = os.path.join(root, f"iter_{iteration:07d}")
    os.makedirs(it_dir)
    run_ranks(_worker, tp * pp, it_dir, a, full, tp, pp, te, per_layer, common_pt)
    with open(os.path.join(it_dir, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1}, f)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))
    return a
