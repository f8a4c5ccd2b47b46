"""Probe which Megatron-LM flags megaclap's command line accepts.

    python tools/megatron_flag_probe.py            # summary + the rejected flags
    python tools/megatron_flag_probe.py --verbose  # every flag with its class

The probe list holds every flag of Megatron-LM's examples/gpt3/train_gpt3_175b_distributed.sh and
examples/llama/train_llama3_8b_h100_fp8.sh (NVIDIA/Megatron-LM@d98e8a64dd) plus flags common in
users' scripts. Each is parsed alone with a sample value; classes:
    rejected      argparse does not know the flag
    implemented   a config field
    no effect     accepted and reported at start-up (megaclap/config/habit_flags.py NO_EFFECT)
    missing       accepted, an error that says so unless at Megatron's own no-op value (MISSING)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys

# flag -> sample value (None: a switch)
FROM_EXAMPLES = {
    "--adam-beta1": "0.9", "--adam-beta2": "0.95", "--apply-layernorm-1p": None, "--attention-backend": "auto",
    "--attention-dropout": "0.0", "--bf16": None, "--calculate-per-token-loss": None, "--ckpt-format": "torch_dist",
    "--clip-grad": "1.0", "--context-parallel-size": "1", "--cross-entropy-loss-fusion": None,
    "--data-cache-path": "cache", "--data-path": "data_text_document", "--decoupled-lr": "5e-4",
    "--decoupled-min-lr": "4.5e-5", "--disable-bias-linear": None, "--distributed-timeout-minutes": "60",
    "--empty-unused-memory-level": "1", "--eval-interval": "100", "--eval-iters": "32",
    "--exit-duration-in-mins": "235", "--ffn-hidden-size": "14336", "--fp16": None,
    "--fp8-amax-compute-algo": "max", "--fp8-amax-history-len": "1024", "--fp8-format": "hybrid",
    "--fp8-param-gather": None, "--global-batch-size": "128", "--grad-reduce-in-bf16": None,
    "--group-query-attention": None, "--hidden-dropout": "0.0", "--hidden-size": "4096",
    "--init-method-std": "0.0134", "--kv-channels": "128", "--load": "ckpt", "--log-interval": "1",
    "--log-throughput": None, "--lr": "1.5e-4", "--lr-decay-iters": "430000", "--lr-decay-samples": "1949218748",
    "--lr-decay-style": "cosine", "--lr-warmup-fraction": ".001", "--lr-warmup-samples": "3906252",
    "--manual-gc": None, "--max-position-embeddings": "8192", "--merge-file": "gpt2-merges.txt",
    "--micro-batch-size": "1", "--min-lr": "1e-5", "--mock-data": None,
    "--no-create-attention-mask-in-dataloader": None, "--no-mmap-bin-files": None, "--normalization": "RMSNorm",
    "--num-attention-heads": "32", "--num-layers": "32", "--num-query-groups": "8", "--num-workers": "1",
    "--overlap-grad-reduce": None, "--overlap-param-gather": None, "--pipeline-model-parallel-size": "16",
    "--position-embedding-type": "rope", "--profile": None, "--profile-step-end": "6", "--profile-step-start": "4",
    "--rotary-base": "1000000", "--rotary-percent": "1.0", "--save": "ckpt", "--save-interval": "1000",
    "--seq-length": "8192", "--sequence-parallel": None, "--split": "99,1,0",
    "--step-batch-size-schedule": "0:16 2.4B:320", "--swiglu": None, "--tensor-model-parallel-size": "8",
    "--tensorboard-dir": "tb", "--tiktoken-pattern": "v2", "--tokenizer-model": "tok",
    "--tokenizer-type": "NullTokenizer", "--train-iters": "500000", "--train-samples": "1953125000",
    "--untie-embeddings-and-output-weights": None, "--use-distributed-optimizer": None, "--use-mcore-models": None,
    "--vocab-file": "gpt2-vocab.json", "--vocab-size": "128256", "--weight-decay": "0.1",
}
COMMON = {
    "--seed": "1234", "--lr-warmup-iters": "2000", "--lr-warmup-init": "0.0", "--rampup-batch-size": ["16", "16", "1000"],
    "--override-opt_param-scheduler": None, "--use-checkpoint-opt_param-scheduler": None,
    "--loss-scale": "1024", "--initial-loss-scale": "65536", "--min-loss-scale": "1", "--loss-scale-window": "1000",
    "--hysteresis": "2", "--adam-eps": "1e-8", "--optimizer": "adam", "--use-flash-attn": None,
    "--transformer-impl": "local", "--attention-softmax-in-fp32": None, "--no-masked-softmax-fusion": None,
    "--no-bias-gelu-fusion": None, "--no-bias-dropout-fusion": None, "--no-bias-swiglu-fusion": None,
    "--no-rope-fusion": None, "--no-gradient-accumulation-fusion": None, "--no-persist-layer-norm": None,
    "--log-params-norm": None, "--log-num-zeros-in-grad": None, "--log-timers-to-tensorboard": None,
    "--log-validation-ppl-to-tensorboard": None, "--log-memory-to-tensorboard": None,
    "--log-world-size-to-tensorboard": None, "--tensorboard-log-interval": "1", "--tensorboard-queue-size": "1000",
    "--distributed-backend": "nccl", "--use-cpu-initialization": None, "--recompute-granularity": "full",
    "--recompute-method": "uniform", "--recompute-num-layers": "1", "--recompute-activations": None,
    "--num-layers-per-virtual-pipeline-stage": "2", "--num-virtual-stages-per-pipeline-rank": "2",
    "--decoder-first-pipeline-num-layers": "2", "--decoder-last-pipeline-num-layers": "2",
    "--make-vocab-size-divisible-by": "128", "--norm-epsilon": "1e-5", "--openai-gelu": None,
    "--squared-relu": None, "--no-position-embedding": None, "--use-rotary-position-embeddings": None,
    "--exit-interval": "1000", "--exit-signal-handler": None, "--finetune": None, "--no-load-optim": None,
    "--no-load-rng": None, "--no-save-optim": None, "--no-save-rng": None, "--use-checkpoint-args": None,
    "--eod-mask-loss": None, "--reset-position-ids": None, "--reset-attention-mask": None,
    "--dataloader-type": "single", "--train-data-path": "a", "--valid-data-path": "b", "--test-data-path": "c",
    "--num-experts": "8", "--expert-model-parallel-size": "1", "--moe-router-topk": "2",
    "--timing-log-level": "0", "--timing-log-option": "minmax", "--barrier-with-L1-time": None,
    "--wandb-project": "p", "--wandb-exp-name": "e", "--wandb-save-dir": "w",
    "--accumulate-allreduce-grads-in-fp32": None, "--fp16-lm-cross-entropy": None, "--use-legacy-models": None,
    "--skip-train": None, "--log-progress": None, "--no-async-tensor-model-parallel-allreduce": None,
    "--qk-layernorm": None, "--add-qkv-bias": None, "--manual-gc-interval": "0", "--use-pytorch-profiler": None,
    "--profile-ranks": "0", "--async-save": None, "--lr-wsd-decay-style": "linear", "--lr-wsd-decay-iters": "10",
    "--num-dataset-builder-threads": "1", "--cross-entropy-fusion-impl": "native", "--tp-comm-overlap": None,
    "--overlap-p2p-communication": None, "--deterministic-mode": None, "--fp8-recipe": "delayed",
    "--start-weight-decay": "0.01", "--end-weight-decay": "0.1", "--weight-decay-incr-style": "constant",
    "--vocab-extra-ids": "0", "--data-args-path": "args.txt",
}
PROBE = {**FROM_EXAMPLES, **COMMON}


def classify(flag: str, value, parser) -> str:
    from megaclap.config.habit_flags import MISSING, NO_EFFECT
    argv = [flag] + ([] if value is None else value if isinstance(value, list) else [value])
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            _, unknown = parser.parse_known_args(argv)
        except (SystemExit, argparse.ArgumentError):  # build_parser has exit_on_error=False
            return "bad sample value"
    if flag in unknown:
        return "rejected"
    return "no effect" if flag in NO_EFFECT else "missing" if flag in MISSING else "implemented"


def main(argv=None) -> int:
    from megaclap.config import build_parser
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    parser = build_parser()
    classes = {flag: classify(flag, value, parser) for flag, value in PROBE.items()}
    counts = {c: sum(v == c for v in classes.values()) for c in sorted(set(classes.values()))}
    from_examples = sum(classes[f] == "rejected" for f in FROM_EXAMPLES)
    print(f"{len(PROBE)} Megatron-LM flags probed ({len(FROM_EXAMPLES)} from the GPT-3 and Llama-3 examples): "
          + ", ".join(f"{n} {c}" for c, n in counts.items())
          + f"; {from_examples} of the rejected are in the examples")
    for flag, c in classes.items():
        if args.verbose or c in ("rejected", "bad sample value"):
            print(f"  {c:16s} {flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
