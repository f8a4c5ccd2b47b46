"""Convert checkpoints between Hugging Face folders, Megatron-LM and megaclap's tp x pp layout.

    python tools/checkpoint/convert.py --model-type llama --loader hf --saver megaclap \
        --load-dir hf/llama --save-dir ckpt/llama --target-tensor-parallel-size 2 \
        --target-pipeline-parallel-size 2
    python tools/checkpoint/convert.py --model-type llama --loader megaclap --saver hf \
        --load-dir ckpt/llama --save-dir hf/llama-out
    python tools/checkpoint/convert.py --loader megatron --saver megaclap \
        --load-dir megatron/ckpt --save-dir ckpt/from-megatron --true-vocab-size 50257 \
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 2

Local folders only (config.json + model.safetensors / pytorch_model.bin); nothing is
downloaded. `--loader megatron` reads Megatron-LM's checkpoints of either format, legacy
`torch` (mp_rank_*/model_optim_rng.pt) or `torch_dist` (torch.distributed.checkpoint),
mcore names, any tp x pp, weights only, without Megatron installed; a setting of the run's
args that megaclap cannot honour fails in one line naming it (megaclap/checkpoint/megatron*.py).
A megaclap save prints the model flags to train or finetune it with.
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
from megaclap.errors import run_tool  # noqa: E402

ALWAYS = ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size", "hidden_dropout",
          "attention_dropout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HF / Megatron-LM <-> megaclap checkpoint conversion", allow_abbrev=False)
    p.add_argument("--model-type", choices=("gpt2", "llama"),
                   help="the Hugging Face architecture (needed with --loader hf or --saver hf)")
    p.add_argument("--loader", required=True, choices=("hf", "megaclap", "megatron"))
    p.add_argument("--saver", required=True, choices=("megaclap", "hf"))
    p.add_argument("--load-dir", required=True)
    p.add_argument("--save-dir", required=True)
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=None,
                   help="vocabulary padding multiple (per tp rank); default 128, or the checkpoint's")
    p.add_argument("--overwrite", action="store_true",
                   help="write even when --save-dir's tracker is at a later iteration (moves it back)")
    p.add_argument("--true-vocab-size", type=int, default=None,
                   help="--loader megatron: the tokenizer's vocabulary, to drop Megatron's padding rows "
                        "(default: keep the padded vocabulary)")
    return p


def model_flags(cfg: ModelConfig) -> str:
    """The megaclap training flags that describe cfg (non-default fields, dropout always)."""
    out = []
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if value is None or (value == f.default and f.name not in ALWAYS) or value is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        out.append(flag if value is True else f"{flag} {value}")
    return " ".join(out)


def special_tokens_of(args: dict) -> dict:
    """{bos_token_id, eos_token_id} known for a megaclap checkpoint: recorded at HF import,
    else from the tokenizer its training run named (when that file is here)."""
    known = dict(args.get("special_tokens") or {})
    data = args.get("data") or {}
    if not known and data.get("tokenizer_type"):
        from megaclap.data.tokenizers import build_tokenizer
        try:
            vocab = (args.get("model") or {}).get("vocab_size")   # NullTokenizer: eod = vocab - 1
            tok = build_tokenizer(data["tokenizer_type"], data.get("tokenizer_model"), vocab,
                                  data.get("vocab_file"), data.get("merge_file"))
        except (OSError, ValueError):
            return {}
        known = {"bos_token_id": getattr(tok, "bos", None), "eos_token_id": tok.eod}
    return {k: v for k, v in known.items() if v is not None}


def _load(args: argparse.Namespace):
    """(full state dict, ModelConfig, base args for the saver, iteration, special token ids)."""
    from megaclap.checkpoint import hf, io, megatron
    if args.loader == "hf":
        full, cfg = hf.read_hf(args.load_dir, args.model_type, args.make_vocab_size_divisible_by or 128)
        special = hf.special_tokens(args.load_dir)
        return full, cfg, ({"special_tokens": special} if special else None), 0, special
    if args.loader == "megatron":
        full, cfg, iteration = megatron.read_megatron(args.load_dir, args.true_vocab_size)
        base, special = None, {}
    else:
        loaded = io.load_checkpoint(args.load_dir)
        full, cfg, base, iteration = loaded.full, loaded.cfg, loaded.args, loaded.iteration
        special = special_tokens_of(base)
    if args.make_vocab_size_divisible_by:
        cfg.make_vocab_size_divisible_by = args.make_vocab_size_divisible_by
    return full, cfg, base, iteration, special


def convert(args: argparse.Namespace) -> str:
    """Load, then save; returns a one-line summary. Raises ConversionError / CheckpointError."""
    from megaclap.checkpoint import hf, io
    if (args.loader == "hf" or args.saver == "hf") and not args.model_type:
        raise ConversionError("--loader hf and --saver hf need --model-type gpt2 or llama")
    if args.true_vocab_size is not None and args.loader != "megatron":
        raise ConversionError("--true-vocab-size applies to --loader megatron only")
    try:
        full, cfg, base_args, iteration, special = _load(args)
    except (ConversionError, CheckpointError) as e:
        if "--load-dir" in str(e):
            raise
        raise type(e)(f"--load-dir {args.load_dir}: {e}") from None
    if args.saver == "hf":
        hf.write_hf(args.save_dir, args.model_type, full, cfg, special)
        return f"wrote Hugging Face {args.model_type} model to {args.save_dir}"
    tp, pp = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
    where = io.save_checkpoint(args.save_dir, full, cfg, tp, pp, iteration, base_args,
                               overwrite=getattr(args, "overwrite", False))
    note = ""
    if args.loader == "megatron" and args.true_vocab_size is None:
        note = (f"note: kept Megatron's padded vocabulary ({cfg.vocab_size} rows); pass --true-vocab-size "
                "to drop the padding rows\n")
    return (f"{note}wrote tp={tp} pp={pp} megaclap checkpoint to {where}\n"
            f"load it with --load {args.save_dir} --finetune (or --no-load-optim), "
            f"--tensor-model-parallel-size {tp} --pipeline-model-parallel-size {pp} and\n  {model_flags(cfg)}")


def _run(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if os.path.realpath(args.save_dir) == os.path.realpath(args.load_dir):
        raise ConversionError(f"--save-dir {args.save_dir} is --load-dir: converting in place would overwrite "
                              "the input; write to another --save-dir")
    print(convert(args), flush=True)


def main(argv=None) -> int:
    """_run with known problems as one line and exit code 2 (the traceback goes to a file)."""
    return run_tool("convert", _run, argv, known=(ConversionError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())
