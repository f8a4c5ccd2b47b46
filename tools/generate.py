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
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
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


def main(argv=None) -> int:
    import torch.distributed as dist

    from megaclap.checkpoint.generate import checkpoint_layout, generate, load_for_inference
    from megaclap.parallel.state import initialize_distributed
    from megaclap.checkpoint.format import CheckpointError
    args = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        tp, pp = checkpoint_layout(args.load) if world > 1 else (1, 1)
    except CheckpointError as e:
        print(f"generate: error: --load {args.load}: {e}", file=sys.stderr)
        return 2
    if world % (tp * pp):
        print(f"generate: error: world size {world} is not a multiple of the checkpoint's tp {tp} x pp {pp}; "
              "launch torchrun with --nproc-per-node tp*pp, or run on one process", file=sys.stderr)
        return 2
    pstate = initialize_distributed(tp, pp)
    try:
        stage = load_for_inference(args.load, pstate)
        tok = build_tokenizer(args, stage.cfg.vocab_size)
        new = generate(stage, tok.tokenize(args.prompt), args.max_new_tokens, pstate, greedy=args.greedy,
                       temperature=args.temperature, top_p=args.top_p, eod=None if args.ignore_eod else tok.eod,
                       seed=args.seed)
    except CheckpointError as e:
        print(f"generate: error: --load {args.load}: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"generate: error: {e}", file=sys.stderr)
        return 2
    if pstate.rank == 0:
        print(tok.detokenize(new), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
