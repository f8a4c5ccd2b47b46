"""Megatron-LM `torch_dist` checkpoints read with torch.distributed.checkpoint (no Megatron, no
process group): the run's args and every model tensor, whole.

What Megatron writes (megatron/core/dist_checkpointing, strategies/torch.py): each model
tensor is one global tensor, stored as chunks by the ranks that held them, under its mcore name.
Transformer layers share one name with a leading layer axis (`decoder.layers.<name>`, global
shape [num_layers, ...]) unless the run saved per-layer names (`decoder.layers.<i>.<name>`,
metadata singleton_local_shards, where SwiGLU's fc1 is two tensors `<name>_w`, `<name>_v`).
Tensor-parallel shards are joined in the global tensor: QKV rows per query group, SwiGLU's fc1
as [all gate rows; all up rows], the vocabulary padded. Non-tensor state (the args, iteration)
is the bytes entry `common_state/shard_0_1` (a torch.save'd [dict], written as is by Megatron's
MCoreSavePlanner) or, from older Megatron, common.pt. Optimizer, RNG and Transformer Engine
`_extra_state` entries are not read.
"""
from __future__ import annotations

import io
import os
import re
import warnings

import torch

from megaclap.checkpoint.keymaps import ConversionError
from megaclap.checkpoint.megatron_files import load_pickle

COMMON_KEY = "common_state/shard_0_1"
MODEL_PREFIXES = ("embedding.", "decoder.", "output_layer.")
_STACKED = re.compile(r"^decoder\.layers\.([a-z_].*)$")   # no layer index: a leading layer axis
_SPLIT_GLU = re.compile(r"^(decoder\.layers\.\d+\.mlp\.linear_fc1\.weight)_([wv])$")


def _reader(it_dir: str):
    from torch.distributed.checkpoint import FileSystemReader
    reader = FileSystemReader(it_dir)
    try:
        return reader, reader.read_metadata()
    except Exception as e:   # a missing or unreadable .metadata
        raise ConversionError(f"{it_dir}: cannot read the torch.distributed.checkpoint metadata "
                              f"(.metadata): {type(e).__name__}: {e}") from None


def _load(state: dict, reader) -> None:
    """Fill state's tensors in place; bytes entries are left as read (raw BytesIO): DCP's default
    planner would unpickle them itself, without the stubs Megatron's classes need."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class RawBytes(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):   # our state dict is flat: fqn is its key
            self.original_state_dict[read_item.dest_index.fqn] = value

    with warnings.catch_warnings():   # "torch.distributed is disabled ... single process": intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, planner=RawBytes(), no_dist=True)


def read_common(it_dir: str) -> dict:
    """The non-tensor state Megatron saved (args, iteration, checkpoint_version, ...)."""
    legacy = os.path.join(it_dir, "common.pt")
    if os.path.isfile(legacy):
        return load_pickle(legacy)
    reader, meta = _reader(it_dir)
    if COMMON_KEY not in meta.state_dict_metadata:
        raise ConversionError(f"{it_dir}: neither common.pt nor a '{COMMON_KEY}' entry: no args to "
                              "read the model from (not a Megatron-LM torch_dist checkpoint?)")
    state = {COMMON_KEY: io.BytesIO()}
    _load(state, reader)
    common = load_pickle(state[COMMON_KEY])   # Megatron writes the torch.save'd [dict] as is
    if isinstance(common, io.BytesIO):        # a writer that pickled the buffer once more
        common.seek(0)
        common = load_pickle(common)
    return common[0] if isinstance(common, list) else common


def read_model(it_dir: str) -> dict:
    """{mcore name with global layer index: full tensor} of every model tensor."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    reader, meta = _reader(it_dir)
    wanted = {k: m for k, m in meta.state_dict_metadata.items()
              if isinstance(m, TensorStorageMetadata) and k.startswith(MODEL_PREFIXES)}
    if not wanted:
        raise ConversionError(f"{it_dir}: the checkpoint holds no model tensors "
                              "(embedding.*, decoder.*)")
    state = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in wanted.items()}
    _load(state, reader)
    out, glu = {}, {}
    for name, tensor in state.items():
        stacked, split = _STACKED.match(name), _SPLIT_GLU.match(name)
        if stacked:
            for i, layer in enumerate(tensor.unbind(0)):
                out[f"decoder.layers.{i}.{stacked.group(1)}"] = layer.clone()
        elif split:
            glu.setdefault(split.group(1), {})[split.group(2)] = tensor
        else:
            out[name] = tensor
    for name, parts in glu.items():   # per-layer names: SwiGLU's fc1 saved as gate (w) and up (v)
        if set(parts) != {"w", "v"}:
            raise ConversionError(f"{it_dir}: {name} has only its _{''.join(parts)} half")
        out[name] = torch.cat((parts["w"], parts["v"]))
    return out
