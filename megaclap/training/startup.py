"""What rank 0 prints before training (Megatron-LM's start-up output, plus megaclap's own):
the arguments block, accepted no-op flags, vocabulary padding, parameters per stage, the dataset
and compression summaries and the simulated link; and the checkpoint save/load lines.

Everything is computed from the config and this rank's Trainer, without collectives, so only
rank 0 needs to call it.
"""
from __future__ import annotations

import dataclasses

import torch

from megaclap.config.flags import flag_name
from megaclap.config.habit_flags import habit_notes


def arguments_block(cfg) -> list:
    """Megatron's `------------------------ arguments ------------------------` block: every flag
    (as its dest name) with dots to column 48, sorted case-insensitively."""
    rows = []
    for section in (cfg.model, cfg.parallel, cfg.optim, cfg.train, cfg.data, cfg.compression):
        for f in dataclasses.fields(section):
            name = flag_name(f).lstrip("-").replace("-", "_")
            rows.append(f"  {name} {'.' * (48 - len(name))} {getattr(section, f.name)}")
    return (["------------------------ arguments ------------------------"]
            + sorted(rows, key=str.lower)
            + ["-------------------- end of arguments ---------------------"])


def vocab_line(cfg, tp: int) -> str:
    m = cfg.model
    padded = m.padded_vocab_size(tp)
    return f" > padded vocab (size: {m.vocab_size}) with {padded - m.vocab_size} dummy tokens (new size: {padded})"


def parameter_lines(cfg, tp: int, pp: int) -> list:
    """Parameters of each pipeline stage (over its tp ranks) and of the model, built on the meta
    device (no memory): a tied output layer on the last stage is a copy, counted once in the total."""
    from megaclap.model.gpt import GPTStage
    from megaclap.config.parallel import layer_ranges
    p = cfg.parallel
    ranges = layer_ranges(cfg.model.num_layers, pp, p.decoder_first_pipeline_num_layers,
                          p.decoder_last_pipeline_num_layers)
    lines, total = [], 0
    extra_rows = cfg.model.padded_vocab_size(tp) - cfg.model.padded_vocab_size(1)
    with torch.device("meta"):
        for rank, (start, end) in enumerate(ranges):
            stage = GPTStage(cfg.model, None, start, end, rank == 0, rank == pp - 1)   # vocab padded for tp=1
            counted = [n for n, _ in stage.named_parameters() if not (pp > 1 and stage.is_tied_copy(n))]
            count = sum(t.numel() for n, t in stage.named_parameters() if n in counted)
            vocab_mats = sum(n in ("embedding.word_embeddings.weight", "output_layer.weight") for n in counted)
            count += vocab_mats * extra_rows * cfg.model.hidden_size
            total += count
            lines.append(f" > number of parameters on pipeline stage {rank} (layers {start}-{end - 1}, "
                         f"over {tp} tensor-parallel ranks): {count:,}")
    lines.append(f" > total number of parameters: {total:,}")
    return lines


def dataset_lines(trainer) -> list:
    """Documents, tokens and samples per split, and the epochs the train sampler will run."""
    lines = []
    for name in ("train", "valid", "test"):
        src = getattr(trainer.data, name)
        if src is None:
            lines.append(f" > {name}: none")
            continue
        ds = src.dataset
        docs, tokens = _docs_tokens(ds)
        what = f"{len(ds):,} samples" if hasattr(ds, "__len__") else "a stream"
        extra = (f", {docs:,} documents, {tokens:,} tokens" if docs is not None
                 else " (mock data)" if trainer.cfg.data.mock_data else "")
        lines.append(f" > {name}: {what}{extra}")
    base = trainer.data.train.sampler.base
    epochs = getattr(base, "num_epochs", None)
    if epochs is not None:
        lines.append(f" > train sampler: {epochs} epoch(s) of {base.num_samples:,} samples")
    elif hasattr(base, "window"):
        lines.append(f" > train sampler: online, one pass, shuffle window {base.window:,}")
    if trainer.cfg.data.mock_data:
        lines.append(" > --mock-data: synthetic tokens; --split only decides which of valid/test exist "
                     "(a zero weight drops the split, as in Megatron-LM)")
    return lines


def _docs_tokens(ds):
    """(documents, tokens) of a GPTDataset or a blend of them; (None, None) otherwise."""
    parts = getattr(ds, "datasets", [ds])
    docs = tokens = 0
    for d in parts:
        if not hasattr(d, "doc_range"):
            return None, None
        lo, hi = d.doc_range
        starts = d.indexed.document_indices
        docs += hi - lo
        tokens += int(d.indexed.sequence_lengths[starts[lo]:starts[hi]].sum())
    return docs, tokens


def _step_bytes(method: str, codec: str, shape, dtype, fresh: bool) -> int:
    """Payload bytes of one microbatch (Channel.payload_nbytes; aqsgd: samples seen before)."""
    from megaclap.compression.codecs import parse_codec
    c = parse_codec(codec)
    raw = torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
    if method == "none" or c.is_lossless(dtype) or (method == "clapping-fu" and fresh):
        return raw
    return c.payload_nbytes(shape, dtype)


def compression_lines(cfg, pp: int, num_microbatches: int) -> list:
    """Method, codecs, lazy sampling and the payload bytes each boundary sends per step."""
    from megaclap.training.trainer import wire_dtype
    c, d = cfg.compression, cfg.data
    fresh = (d.lazy_sampling_prob if d.lazy_sampling_prob is not None
             else 1 / d.lazy_sampling_period if d.lazy_sampling_period else 1.0)
    lazy = (f"p={d.lazy_sampling_prob}" if d.lazy_sampling_prob is not None
            else f"every {d.lazy_sampling_period} steps" if d.lazy_sampling_period else "off")
    lines = [f" > pipeline compression: forward {c.method} ({c.fwd_codec}), backward {c.effective_bwd_method} "
             f"({c.bwd_codec}), lazy sampling {lazy}"]
    if pp == 1:
        return lines + [" > pipeline compression: pp=1, no stage boundary, nothing is sent"]
    shape = (cfg.train.micro_batch_size, cfg.model.seq_length, cfg.model.hidden_size)
    dtype = wire_dtype(cfg.optim)
    raw = num_microbatches * torch.Size(shape).numel() * torch.finfo(dtype).bits // 8
    for direction, method, codec in (("fwd", c.method, c.fwd_codec), ("bwd", c.effective_bwd_method, c.bwd_codec)):
        per_mb = [_step_bytes(method, codec, shape, dtype, f) for f in (True, False)]
        sent = int(num_microbatches * (fresh * per_mb[0] + (1 - fresh) * per_mb[1]))
        note = " (aqsgd: samples not seen before go raw)" if method == "aqsgd" else ""
        lines.append(f" > expected p2p bytes per step per boundary and sending rank ({direction}): {sent:,} of "
                     f"{raw:,} raw (ratio {sent / raw:.3f}, {num_microbatches} microbatches){note}")
    return lines


def link_lines(cfg) -> list:
    """The simulated link (ParallelConfig fields named sim_*) when any is set."""
    sim = {flag_name(f): getattr(cfg.parallel, f.name) for f in dataclasses.fields(cfg.parallel)
           if f.name.startswith("sim_") and getattr(cfg.parallel, f.name)}
    return [" > simulated link: " + ", ".join(f"{k} {v}" for k, v in sim.items())] if sim else []


def startup_summary(cfg, trainer) -> list:
    """All start-up lines, in order (rank 0 prints them)."""
    ps = trainer.ps
    lines = arguments_block(cfg) + habit_notes(cfg.megatron_flags)
    lines.append(vocab_line(cfg, ps.tp_size))
    lines += parameter_lines(cfg, ps.tp_size, ps.pp_size)
    lines += dataset_lines(trainer)
    microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * ps.dp_size)
    lines += compression_lines(cfg, ps.pp_size, microbatches)
    return lines + link_lines(cfg)


def checkpoint_line(action: str, root: str, iteration: int, seconds: float, what: str = "") -> str:
    """'  successfully saved checkpoint from iteration N to DIR (...) in S s' (Megatron's wording)."""
    prep = "to" if action == "saved" else "from"
    return (f"  successfully {action} checkpoint {'from' if action == 'saved' else 'at'} iteration {iteration:7d} "
            f"{prep} {root}{' (' + what + ')' if what else ''} in {seconds:.2f} s")
