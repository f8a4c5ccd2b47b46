"""Generate text from a megaclap checkpoint.

    python tools/generate.py --load ckpt/llama --prompt "1 2 3" --max-new-tokens 16 --greedy
    torchrun --nproc-per-node 4 tools/generate.py --load ckpt/llama_tp2pp2 \
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf/llama --prompt "Hello" --top-p 0.9

Under torchrun the world size must be a multiple of the checkpoint's tp x pp, and each
rank loads only its shard; at world size 1 the shards are merged into one model. With
--tokenizer-type NullTokenizer (the default) the prompt is space-separated token ids.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="megaclap text generation", allow_abbrev=False)
    p.add_argument("--load", required=True, help="checkpoint directory (with latest_checkpointed_iteration.txt)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help=">= 0; 0 decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 keeps every token")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature / top-p)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tokenizer-type", default="NullTokenizer")
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer's vocab.json")
    p.add_argument("--merge-file", default=None, help="GPT2BPETokenizer's merges.txt")
    p.add_argument("--ignore-eod", action="store_true", help="do not stop at the tokenizer's end-of-document id")
    return p


def build_tokenizer(args, vocab_size: int):
    """The tokenizer; NullTokenizer ids span the model's vocabulary (eod = vocab_size - 1)."""
    from megaclap.data.tokenizers import build_tokenizer as build
    return build(args.tokenizer_type, args.tokenizer_model, vocab_size, args.vocab_file, args.merge_file)


def check_args(args) -> None:
    """Refuse sampling flags that would be silently reinterpreted (one line, exit code 2)."""
    from megaclap.errors import UserValueError
    if args.max_new_tokens < 1:
        raise UserValueError(f"--max-new-tokens {args.max_new_tokens} must be >= 1 (tokens to generate)")
    if args.temperature < 0:
        raise UserValueError(f"--temperature {args.temperature} must be >= 0 (0 decodes greedily, as --greedy)")
    if not 0 < args.top_p <= 1:
        raise UserValueError(f"--top-p {args.top_p} must be in (0, 1] (the probability mass sampled from; 1 "
                             "keeps every token)")


def _run(argv=None) -> None:
    import torch.distributed as dist

    from megaclap.checkpoint.format import CheckpointError
    from megaclap.checkpoint.generate import checkpoint_layout, generate, load_for_inference
    from megaclap.errors import UserValueError
    from megaclap.parallel.state import initialize_distributed
    args = build_parser().parse_args(argv)
    check_args(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        tp, pp = checkpoint_layout(args.load) if world > 1 else (1, 1)
        if world % (tp * pp):
            raise UserValueError(f"world size {world} is not a multiple of the checkpoint's tp {tp} x pp {pp}; "
                                 "launch torchrun with --nproc-per-node tp*pp, or run on one process")
        pstate = initialize_distributed(tp, pp)
        stage = load_for_inference(args.load, pstate)
    except CheckpointError as e:
        raise CheckpointError(f"--load {args.load}: {e}") from e
    tok = build_tokenizer(args, stage.cfg.vocab_size)
    new = generate(stage, tok.tokenize(args.prompt), args.max_new_tokens, pstate, greedy=args.greedy,
                   temperature=args.temperature, top_p=args.top_p, eod=None if args.ignore_eod else tok.eod,
                   seed=args.seed)
    if pstate.rank == 0:
        print(tok.detokenize(new), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> int:
    """_run with known problems as one line and exit code 2 (the traceback goes to a file)."""
    from megaclap.errors import run_tool
    return run_tool("generate", _run, argv, known=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
