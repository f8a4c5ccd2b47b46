"""What a checkpoint's recorded arguments must agree on with the run that loads it, checked
before any tensor is loaded, so a mismatch is one line naming the flag instead of a shape error
from load_state_dict (or, worse, a load that fits and means something else: 4 heads re-split
as 8 heads of the same hidden size load without a word).

    check_model(saved, cfg, tp)        every flag that changes the model's parameters or function
    check_split(saved, cfg)            resuming (not --finetune) on the same data with another
                                       --split would validate on documents it trained on
    channel_state_note(saved, cfg)     another --pp-compression-method / --pp-bwd-compression-method:
                                       the saved Channel references are dropped (a note, as for
                                       a change of data-parallel size), never fed to another method

`saved` is the checkpoint's `args` entry (dataclasses.asdict of its MegaclapConfig); sections or
keys it lacks (older checkpoints, converted ones) are not checked.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from megaclap.checkpoint.format import CheckpointError


def _saved_model(saved: dict):
    from megaclap.config import ModelConfig
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model = saved.get("model") or {}
    return ModelConfig(**{k: v for k, v in model.items() if k in known}), model


def _model_pairs(old, new, tp: int, recorded: dict) -> list:
    """(flag, checkpoint's value, this run's value) of everything the weights depend on."""
    pairs = [("--num-layers", old.num_layers, new.num_layers),
             ("--hidden-size", old.hidden_size, new.hidden_size),
             ("--num-attention-heads", old.num_attention_heads, new.num_attention_heads),
             ("--group-query-attention", old.group_query_attention, new.group_query_attention),
             ("--vocab-size", old.vocab_size, new.vocab_size),
             ("--position-embedding-type", old.position_embedding_type, new.position_embedding_type),
             ("--normalization", old.normalization, new.normalization), ("--swiglu", old.swiglu, new.swiglu),
             ("--untie-embeddings-and-output-weights", old.untie_embeddings_and_output_weights,
              new.untie_embeddings_and_output_weights),
             ("--disable-bias-linear", old.disable_bias_linear, new.disable_bias_linear)]
    if old.hidden_size == new.hidden_size or old.ffn_hidden_size or new.ffn_hidden_size:  # else it follows h
        pairs.append(("--ffn-hidden-size", old.ffn, new.ffn))
    if old.group_query_attention or new.group_query_attention:  # else the groups follow the heads
        pairs.append(("--num-query-groups", old.query_groups, new.query_groups))
    if "openai_gelu" in recorded:  # checkpoints from before the flag existed used exact GELU
        pairs.append(("--openai-gelu", old.openai_gelu, new.openai_gelu))
    if new.position_embedding_type == "learned_absolute":
        pairs.append(("--max-position-embeddings", old.max_position_embeddings or old.seq_length,
                      new.max_position_embeddings or new.seq_length))
    else:
        pairs.append(("--rotary-base", old.rotary_base, new.rotary_base))
    if old.vocab_size and new.vocab_size and old.vocab_size == new.vocab_size:
        pairs.append(("--make-vocab-size-divisible-by", old.padded_vocab_size(tp), new.padded_vocab_size(tp)))
    return pairs


def _difference(flag: str, saved, now) -> str:
    if isinstance(saved, bool):
        return f"{flag} {'set' if saved else 'not set'} (this run: {'set' if now else 'not set'})"
    if flag == "--make-vocab-size-divisible-by":
        return f"{flag} giving {saved} vocabulary rows (this run: {now})"
    return f"{flag} {saved} (this run: {now})"


def check_model(saved: dict, cfg, tp: int, root: str) -> None:
    """CheckpointError naming every model flag whose value differs from the checkpoint's."""
    if not saved.get("model"):
        return
    old, recorded = _saved_model(saved)
    diffs = [_difference(flag, a, b) for flag, a, b in _model_pairs(old, cfg.model, tp, recorded)
             if a is not None and a != b]
    if diffs:
        raise CheckpointError(f"--load {root} holds a model saved with {'; '.join(diffs)}: its weights do "
                              "not fit this run's model; pass the checkpoint's values (or convert the checkpoint)")


def check_split(saved: dict, cfg, root: str) -> None:
    """Resuming on the same --data-path with another --split is refused (with --finetune allowed)."""
    from megaclap.config.data import parse_split
    data, now = saved.get("data") or {}, cfg.data
    same_data = list(data.get("data_path") or []) == now.data_path
    if cfg.train.finetune or now.mock_data or "split" not in data or not same_data:
        return
    if parse_split(str(data["split"])) != parse_split(now.split):
        raise CheckpointError(
            f"--split {now.split} differs from the checkpoint's {data['split']} (--load {root}): documents it "
            "trained on would now be validated or tested (or the reverse); resume with "
            f"--split {data['split']}, or start a new run on the new split with --finetune")


def _methods(compression: dict) -> tuple:
    from megaclap.config.compression import default_bwd_method
    method = compression.get("method", "none")
    return method, compression.get("bwd_method") or default_bwd_method(method)


def channel_state_note(saved: dict, cfg) -> Optional[str]:
    """None when the saved Channel state belongs to this run's methods; else the note to print
    (the state is then not loaded: Channels start fresh)."""
    if not saved.get("compression"):
        return None
    old = _methods(saved["compression"])
    new = _methods(dataclasses.asdict(cfg.compression))
    if old == new:
        return None
    return (f"pipeline compression changed from {old[0]}/{old[1]} (forward/backward) in the checkpoint to "
            f"{new[0]}/{new[1]}: Channel references and AQ-SGD stores start fresh")
