"""Entry point behind examples/pretrain_gpt/pretrain_gpt.py (launch with torchrun)."""
from __future__ import annotations

import copy
import os
import sys
import time
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from megaclap.config import ConfigError, MegaclapConfig, parse_args
from megaclap.errors import EXIT_CODE, UserError, report


def resolve_vocab_size(cfg: MegaclapConfig) -> Optional[str]:
    """Size the model's vocabulary as Megatron-LM does; returns a start-up note when the
    tokenizer overrides --vocab-size.

    NullTokenizer --vocab-size V has V ids (end-of-document id V - 1), as in Megatron-LM since
    core 0.18; with --legacy-null-tokenizer V + 1 (end-of-document id V), the older rule. Any
    other tokenizer (with real data) gives its own size: Megatron reads --vocab-size for
    NullTokenizer only (its Llama script passes --vocab-size 128256 with a HuggingFaceTokenizer)."""
    d = cfg.data
    if d.tokenizer_type == "NullTokenizer":
        if cfg.model.vocab_size is not None:
            cfg.model.vocab_size += 1 if d.legacy_null_tokenizer else 0
        return None
    if not d.tokenizer_type or d.mock_data:
        return None
    from megaclap.data.tokenizers import build_tokenizer
    tokenizer = build_tokenizer(d.tokenizer_type, d.tokenizer_model, None, d.vocab_file, d.merge_file)
    size = tokenizer.vocab_size
    given, cfg.model.vocab_size = cfg.model.vocab_size, size
    if given is None or given == size:
        return None
    return (f" > --vocab-size {given}: the vocabulary is the tokenizer's, {size} ids (Megatron-LM reads "
            "--vocab-size for NullTokenizer only)")


def setup(argv: Optional[Sequence[str]] = None):
    """Parse and validate on every rank before any collective, then join the job."""
    from megaclap.parallel.state import initialize_distributed
    cfg = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    note = resolve_vocab_size(cfg)
    cfg.validate(world_size)
    if note and os.environ.get("RANK", "0") == "0":
        print(note, flush=True)
    p = cfg.parallel
    pp = 1 if p.pp_emulate else p.pipeline_model_parallel_size  # emulated: a process holds all
    pstate = initialize_distributed(p.tensor_model_parallel_size, pp, p.distributed_timeout_minutes,
                                    p.distributed_backend)
    return cfg, pstate


def run(cfg: MegaclapConfig, pstate, print_fn=None):
    """Check the outputs (writable; --save locked by this job for the whole run), then build,
    resume, train, save and test on this rank; returns the Trainer. With --pp-emulate this
    process runs every stage's program (megaclap.parallel.emulate) under the one claim of its
    outputs, and returns the last stage's Trainer."""
    from megaclap.training.preflight import claim_outputs
    print_fn = print_fn or (lambda s: print(s, flush=True))
    p = cfg.parallel
    emulate = p.pp_emulate and p.pipeline_model_parallel_size > 1 and pstate.pp_size == 1
    if pstate.rank == 0:
        pp = p.pipeline_model_parallel_size if emulate else pstate.pp_size
        emulated = " (all stages in each process: --pp-emulate)" if emulate else ""
        print_fn(f"megaclap: world {pstate.world_size * pp // pstate.pp_size} = tp {pstate.tp_size} x "
                 f"dp {pstate.dp_size} x pp {pp}{emulated}, device {pstate.device.type}, "
                 f"{cfg.num_microbatches(pstate.world_size)} microbatches per step")
    outputs = claim_outputs(cfg, pstate)
    try:
        for note in outputs.notes:
            print_fn(f" note: {note}")
        if emulate:
            from megaclap.parallel.emulate import run_pipeline
            trainers = run_pipeline(pstate, p.pipeline_model_parallel_size,
                                    lambda view: _train(copy.deepcopy(cfg), view, print_fn, outputs.tag))
            return trainers[-1]
        return _train(cfg, pstate, print_fn, outputs.tag)
    finally:
        outputs.release()


def _train(cfg: MegaclapConfig, pstate, print_fn, tag: str):
    from megaclap.training.checkpointing import Checkpointer
    from megaclap.training.logging import format_validation_line, validation_block
    from megaclap.training.startup import checkpoint_line, startup_summary
    from megaclap.training.trainer import Trainer
    trainer = Trainer(cfg, pstate, print_fn=print_fn)
    if pstate.rank == 0:
        for line in startup_summary(cfg, trainer):
            print_fn(line)
    checkpointer = Checkpointer(cfg, pstate, print_fn=print_fn)
    checkpointer.tag = tag
    start = time.perf_counter()
    loaded = checkpointer.load(trainer)
    if loaded is not None and pstate.rank == 0:
        print_fn(checkpoint_line("loaded", cfg.train.load, loaded, time.perf_counter() - start,
                                 "weights only" if cfg.train.finetune else "model, optimizer, scheduler, data cursor"))
    trainer.train(checkpointer)
    checkpointer.finish(trainer)
    for source, split in ((trainer.data.valid, "validation set"), (trainer.data.test, "test set")):
        if source is not None and cfg.train.eval_iters > 0:   # as Megatron after training
            loss = trainer.evaluate(source)
            if pstate.is_logging_rank:
                for line in validation_block(format_validation_line(trainer.iteration, loss, split)):
                    print_fn(line)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the job; a known problem (megaclap.errors.UserError) ends it with one line and exit code 2."""
    try:
        cfg, pstate = setup(argv)
    except (ConfigError, UserError) as e:  # before the process group: same on every rank, print once per node
        if os.environ.get("LOCAL_RANK", "0") == "0":
            kind = "configuration error" if isinstance(e, ConfigError) else "error"
            print(f"megaclap: {kind}: {e}", file=sys.stderr, flush=True)
        return EXIT_CODE
    try:
        run(cfg, pstate)
    except Exception as e:  # re-raised unless known (or a consequence of a peer's known error)
        code = report(e, pstate.rank, cfg.train.verbose_errors)
        sys.stdout.flush()
        if pstate.world_size > 1:  # peers blocked in a collective see this process go; torchrun tears down
            os._exit(code)
        return code
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0
