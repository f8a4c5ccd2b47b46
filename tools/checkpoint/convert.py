"""Convert checkpoints between Hugging Face folders and megaclap's tp x pp Megatron layout.

    python tools/checkpoint/convert.py --model-type llama --loader hf --saver megaclap \
        --load-dir hf/llama --save-dir ckpt/llama --target-tensor-parallel-size 2 \
        --target-pipeline-parallel-size 2
    python tools/checkpoint/convert.py --model-type llama --loader megaclap --saver hf \
        --load-dir ckpt/llama --save-dir hf/llama-out

Local folders only (config.json + model.safetensors / pytorch_model.bin); nothing is
downloaded. A megaclap save prints the model flags to train or finetune it with.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megaclap.checkpoint.keymaps import ConversionError  # noqa: E402
from megaclap.config import ConfigError, ModelConfig  # noqa: E402
from megaclap.checkpoint.format import CheckpointError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HF <-> megaclap checkpoint conversion", allow_abbrev=False)
    p.add_argument("--model-type", required=True, choices=("gpt2", "llama"))
    p.add_argument("--loader", required=True, choices=("hf", "megaclap"))
    p.add_argument("--saver", required=True, choices=("megaclap", "hf"))
    p.add_argument("--load-dir", required=True)
    p.add_argument("--save-dir", required=True)
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=None,
                   help="vocabulary padding multiple (per tp rank); default 128, or the checkpoint's")
    p.add_argument("--overwrite", action="store_true",
                   help="write even when --save-dir's tracker is at a later iteration (moves it back)")
    return p


def model_flags(cfg: ModelConfig) -> str:
    """The megaclap training flags that describe cfg (non-default fields)."""
    out, always = [], ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size")
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if value is None or (value == f.default and f.name not in always):
            continue
        flag = "--" + f.name.replace("_", "-")
        out.append(flag if value is True else f"{flag} {value}")
    return " ".join(out)


def convert(args: argparse.Namespace) -> str:
    """Load, then save; returns a one-line summary. Raises ConversionError / CheckpointError."""
    from megaclap.checkpoint import hf, io
    if args.loader == "hf":
        full, cfg = hf.read_hf(args.load_dir, args.model_type, args.make_vocab_size_divisible_by or 128)
        base_args, iteration = None, 0
    else:
        loaded = io.load_checkpoint(args.load_dir)
        full, cfg, base_args, iteration = loaded.full, loaded.cfg, loaded.args, loaded.iteration
        hf.check_flavour(args.model_type, cfg)
        if args.make_vocab_size_divisible_by:
            cfg.make_vocab_size_divisible_by = args.make_vocab_size_divisible_by
    if args.saver == "hf":
        hf.write_hf(args.save_dir, args.model_type, full, cfg)
        return f"wrote Hugging Face {args.model_type} model to {args.save_dir}"
    tp, pp = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
    where = io.save_checkpoint(args.save_dir, full, cfg, tp, pp, iteration, base_args,
                               overwrite=getattr(args, "overwrite", False))
    return (f"wrote tp={tp} pp={pp} megaclap checkpoint to {where}\n"
            f"load it with --load {args.save_dir} --finetune (or --no-load-optim), "
            f"--tensor-model-parallel-size {tp} --pipeline-model-parallel-size {pp} and\n  {model_flags(cfg)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(convert(args), flush=True)
    except (ConversionError, CheckpointError, ConfigError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
