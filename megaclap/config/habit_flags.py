"""Megatron-LM flags megaclap accepts but that change nothing here, and Megatron features it lacks.

NO_EFFECT and MISSING are the common ones, each with its reason and its own --help line; every
other flag of Megatron-LM's parser (the shipped list, `megatron_flags.py`) is accepted too,
hidden from --help behind one summary line, and answered in `megatron_answers.py`. Accepted
flags are reported at start-up, one line each (`startup.print_habit_flags`); never silently dropped. A missing feature
is an error (one line: the flag, its Megatron-LM group, what to do instead), except at the value
where Megatron-LM itself does nothing (e.g. --sequence-parallel at tensor-parallel size 1),
where it is reported like a habit flag. Old Megatron spellings stay here as aliases
(--use-legacy-models, --overlap-p2p-communication, --barrier-with-L1-time, ...).
"""
from __future__ import annotations

import argparse
import re

from .errors import ConfigError
from .megatron_flags import NO_EFFECT as NONE, REFUSED, answer, megatron_flags, source

SWITCH, VALUE, VALUES = "switch", "value", "values"   # no value, one value, one or more values

_FUSION = "megaclap runs plain PyTorch ops (no fused kernels to switch)"
_TIMERS = "megaclap's per-phase timers are --timing-log-level 1 (log line and TensorBoard)"
_PROFILE = "megaclap has no profiler hooks; run it under nsys or torch.profiler"
_WANDB = "megaclap logs to TensorBoard only (--tensorboard-dir)"

NO_EFFECT = {
    "--use-mcore-models": (SWITCH, "megaclap has one model implementation (with mcore parameter names)"),
    "--use-legacy-models": (SWITCH, "megaclap has one model implementation (with mcore parameter names)"),
    "--transformer-impl": (VALUE, "megaclap has one implementation in plain PyTorch (no Transformer Engine)"),
    "--attention-backend": (VALUE, "attention is torch SDPA, which picks its own kernel"),
    "--use-flash-attn": (SWITCH, "attention is torch SDPA, which picks its own kernel (flash where it can)"),
    "--attention-softmax-in-fp32": (SWITCH, "SDPA accumulates the softmax in fp32"),
    "--no-masked-softmax-fusion": (SWITCH, _FUSION),
    "--no-bias-gelu-fusion": (SWITCH, _FUSION),
    "--no-bias-swiglu-fusion": (SWITCH, _FUSION),
    "--no-bias-dropout-fusion": (SWITCH, _FUSION),
    "--no-rope-fusion": (SWITCH, _FUSION),
    "--no-gradient-accumulation-fusion": (SWITCH, _FUSION),
    "--no-persist-layer-norm": (SWITCH, _FUSION),
    "--cross-entropy-loss-fusion": (SWITCH, "the loss is torch's cross_entropy (fused) at tensor-parallel size 1"),
    "--cross-entropy-fusion-impl": (VALUE, "the loss is torch's cross_entropy (fused) at tensor-parallel size 1"),
    "--apply-layernorm-1p": (SWITCH, "norm weights get no weight decay here, so weight 1+w trains exactly as w"),
    "--calculate-per-token-loss": (SWITCH, "every microbatch has the same token count and no loss mask, so the "
                                           "per-token mean is the per-microbatch mean used here"),
    "--accumulate-allreduce-grads-in-fp32": (SWITCH, "gradients are always accumulated and all-reduced in fp32"),
    "--grad-reduce-in-bf16": (SWITCH, "gradients are all-reduced in fp32 (more precise, same meaning)"),
    "--overlap-grad-reduce": (SWITCH, "the data-parallel all-reduce always overlaps backward (--ddp-bucket-size)"),
    "--overlap-param-gather": (SWITCH, "there is no distributed optimizer, so no parameter all-gather to overlap"),
    "--no-async-tensor-model-parallel-allreduce": (SWITCH, "tensor-parallel all-reduces are synchronous"),
    "--manual-gc": (SWITCH, "Python's garbage collector runs as usual"),
    "--manual-gc-interval": (VALUE, "Python's garbage collector runs as usual"),
    "--empty-unused-memory-level": (VALUE, "the caching allocator is never emptied by megaclap"),
    "--num-workers": (VALUE, "batches are read in the training process from memory-mapped .bin files"),
    "--no-mmap-bin-files": (SWITCH, "the .bin files are always memory-mapped"),
    "--no-create-attention-mask-in-dataloader": (SWITCH, "the causal mask is implicit in SDPA; none is built"),
    "--tiktoken-pattern": (VALUE, "megaclap has no TikTokenizer"),
    "--ckpt-format": (VALUE, "megaclap writes Megatron's legacy torch layout "
                             "(iter_*/mp_rank_*/model_optim_rng.pt) whatever the format"),
    "--log-throughput": (SWITCH, "the throughput is always in the log line"),
    "--log-params-norm": (SWITCH, "megaclap does not log the parameter norm"),
    "--log-num-zeros-in-grad": (SWITCH, "megaclap does not count zeros in the gradient"),
    "--log-timers-to-tensorboard": (SWITCH, _TIMERS),
    "--log-memory-to-tensorboard": (SWITCH, "megaclap does not log memory to TensorBoard"),
    "--log-validation-ppl-to-tensorboard": (SWITCH, "the validation perplexity is always logged"),
    "--log-world-size-to-tensorboard": (SWITCH, "the layout is printed at start-up"),
    "--timing-log-option": (VALUE, _TIMERS),
    "--barrier-with-L1-time": (SWITCH, _TIMERS),
    "--profile": (SWITCH, _PROFILE),
    "--use-pytorch-profiler": (SWITCH, _PROFILE),
    "--profile-step-start": (VALUE, _PROFILE),
    "--profile-step-end": (VALUE, _PROFILE),
    "--profile-ranks": (VALUES, _PROFILE),
    "--wandb-project": (VALUE, _WANDB),
    "--wandb-exp-name": (VALUE, _WANDB),
    "--wandb-save-dir": (VALUE, _WANDB),
    "--tensorboard-log-interval": (VALUE, "TensorBoard scalars are written at every --log-interval"),
    "--tensorboard-queue-size": (VALUE, "the TensorBoard writer keeps its own queue"),
    "--log-progress": (SWITCH, "megaclap writes no progress.txt; the log line has the consumed samples"),
    "--async-save": (SWITCH, "checkpoints are written synchronously (atomically, see Checkpoints)"),
    "--tp-comm-overlap": (SWITCH, "tensor-parallel communication is not overlapped (same result)"),
    "--overlap-p2p-communication": (SWITCH, "pipeline p2p runs in the schedule's order (same result)"),
    "--num-dataset-builder-threads": (VALUE, "index arrays are built by one thread (and cached with --data-cache-path)"),
    "--fp16-lm-cross-entropy": (SWITCH, "the loss is computed in fp32 (more precise)"),
    "--dataloader-type": (VALUE, "samples come from megaclap's few-epoch sampler (or --online)"),
}

# Features megaclap lacks: (kind, what to do instead, the value at which Megatron does nothing
# itself, given the layout (tp, pp, dp) -> bool).
MISSING = {
    "--sequence-parallel": (SWITCH, "sequence parallelism is not implemented; drop --sequence-parallel",
                            lambda v, tp, pp, dp: tp == 1),
    "--use-distributed-optimizer": (SWITCH, "the optimizer state is not sharded over data-parallel ranks "
                                            "(no ZeRO-1); drop --use-distributed-optimizer",
                                    lambda v, tp, pp, dp: dp == 1),
    "--context-parallel-size": (VALUE, "context parallelism is not implemented; use --context-parallel-size 1",
                                lambda v, tp, pp, dp: int(v) == 1),
    "--expert-model-parallel-size": (VALUE, "mixture-of-experts is not implemented; use "
                                            "--expert-model-parallel-size 1", lambda v, tp, pp, dp: int(v) == 1),
    "--num-experts": (VALUE, "mixture-of-experts is not implemented; drop --num-experts", None),
    "--num-layers-per-virtual-pipeline-stage": (VALUE, "the interleaved (virtual pipeline) schedule is not "
                                                       "implemented; use --pipeline-schedule 1f1b", None),
    "--num-virtual-stages-per-pipeline-rank": (VALUE, "the interleaved (virtual pipeline) schedule is not "
                                                      "implemented; use --pipeline-schedule 1f1b", None),
    "--fp8-format": (VALUE, "FP8 training (Transformer Engine) is not implemented; use --bf16", None),
    "--fp8-amax-history-len": (VALUE, "FP8 training (Transformer Engine) is not implemented; use --bf16", None),
    "--fp8-amax-compute-algo": (VALUE, "FP8 training (Transformer Engine) is not implemented; use --bf16", None),
    "--fp8-param-gather": (SWITCH, "FP8 training (Transformer Engine) is not implemented; use --bf16", None),
    "--fp8-recipe": (VALUE, "FP8 training (Transformer Engine) is not implemented; use --bf16", None),
    "--moe-router-topk": (VALUE, "mixture-of-experts is not implemented; drop --moe-router-topk", None),
    "--recompute-activations": (SWITCH, "selective recomputation is not implemented; use --recompute-granularity full",
                                None),
    "--recompute-method": (VALUE, "with --recompute-granularity full every layer is recomputed: use uniform",
                           lambda v, tp, pp, dp: v == "uniform"),
    "--recompute-num-layers": (VALUE, "with --recompute-granularity full every layer is recomputed: use 1",
                               lambda v, tp, pp, dp: int(v) == 1),
    "--use-rotary-position-embeddings": (SWITCH, "use --position-embedding-type rope", None),
    "--no-position-embedding": (SWITCH, "models without position embeddings are not implemented; use "
                                        "--position-embedding-type rope or learned_absolute", None),
    "--squared-relu": (SWITCH, "squared ReLU is not implemented (GELU, or --swiglu)", None),
    "--qk-layernorm": (SWITCH, "query/key layer norm is not implemented", None),
    "--add-qkv-bias": (SWITCH, "a QKV-only bias is not implemented (biases are on all linears or, with "
                               "--disable-bias-linear, none)", None),
    "--eod-mask-loss": (SWITCH, "end-of-document loss masking is not implemented", None),
    "--reset-position-ids": (SWITCH, "per-document position ids are not implemented", None),
    "--reset-attention-mask": (SWITCH, "per-document attention masks are not implemented", None),
    "--train-data-path": (VALUES, "per-split data paths are not implemented; use --data-path with --split", None),
    "--valid-data-path": (VALUES, "per-split data paths are not implemented; use --data-path with --split", None),
    "--test-data-path": (VALUES, "per-split data paths are not implemented; use --data-path with --split", None),
    "--data-args-path": (VALUE, "data paths from a file are not implemented; use --data-path", None),
    "--optimizer": (VALUE, "only Adam(W) is implemented; use --optimizer adam", lambda v, tp, pp, dp: v == "adam"),
    "--lr-wsd-decay-style": (VALUE, "the warmup-stable-decay schedule is not implemented", None),
    "--lr-wsd-decay-iters": (VALUE, "the warmup-stable-decay schedule is not implemented", None),
    "--start-weight-decay": (VALUE, "weight-decay schedules are not implemented; use --weight-decay", None),
    "--end-weight-decay": (VALUE, "weight-decay schedules are not implemented; use --weight-decay", None),
    "--weight-decay-incr-style": (VALUE, "weight-decay schedules are not implemented; use constant",
                                  lambda v, tp, pp, dp: v == "constant"),
    "--no-save-optim": (SWITCH, "checkpoints always hold the optimizer state", None),
    "--no-save-rng": (SWITCH, "checkpoints always hold the RNG states", None),
    "--use-checkpoint-args": (SWITCH, "model flags are not read from the checkpoint; pass them (the converter "
                                      "prints them)", None),
    "--exit-signal-handler": (SWITCH, "megaclap does not save on SIGTERM; use --exit-duration-in-mins or "
                                      "--save-interval", None),
    "--skip-train": (SWITCH, "evaluation-only runs are not implemented", None),
    "--deterministic-mode": (SWITCH, "use torch.use_deterministic_algorithms in your launcher", None),
    "--vocab-extra-ids": (VALUE, "extra vocabulary ids (T5) are not implemented", lambda v, tp, pp, dp: int(v) == 0),
}

_KWARGS = {SWITCH: dict(action="store_true"), VALUE: dict(metavar="VALUE"), VALUES: dict(nargs="+", metavar="VALUE")}


def _dest(flag: str) -> str:
    return "megatron_" + flag.lstrip("-").replace("-", "_")


def _nargs_kwargs(nargs: str) -> dict:
    """argparse kwargs for a listed flag's number of values (any string is accepted)."""
    if nargs == "0":
        return dict(action="store_true")
    if nargs == "1":
        return {}
    if nargs.isdigit():
        return dict(nargs=int(nargs))
    return dict(nargs="?", const=True) if nargs == "?" else dict(nargs=nargs)


def other_megatron_flags(parser: argparse.ArgumentParser) -> list:
    """The listed Megatron-LM flags the parser does not have yet (MegatronFlag records)."""
    return [m for flag, m in megatron_flags().items() if flag not in parser._option_string_actions]


def add_habit_args(parser: argparse.ArgumentParser) -> None:
    """The flags above, in two help groups, then every other Megatron-LM flag, hidden from --help
    behind one summary line; all present in the namespace only when given."""
    for title, table in (("Megatron-LM flags with no effect in megaclap", NO_EFFECT),
                         ("Megatron-LM features megaclap lacks (an error unless at the no-op value)", MISSING)):
        group = parser.add_argument_group(title)
        for flag, (kind, reason, *_) in table.items():
            group.add_argument(flag, dest=_dest(flag), default=argparse.SUPPRESS, help=reason, **_KWARGS[kind])
    others = other_megatron_flags(parser)
    kinds = [answer(m.flag)[0] for m in others]
    commit = re.sub(r"\b([0-9a-f]{10})[0-9a-f]{30}\b", r"\1", source())
    summary = (f"The other {len(others)} flags of Megatron-LM's parser ({commit}) are accepted too: "
               f"{kinds.count(NONE)} have no effect here (a start-up line each says why), "
               f"{kinds.count(REFUSED)} are refused in one line naming what megaclap offers instead. "
               "`python tools/megatron_flag_probe.py --list` prints every answer.")
    group = parser.add_argument_group("Megatron-LM's other flags", summary)
    for m in others:
        group.add_argument(m.flag, dest=_dest(m.flag), default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                           **_nargs_kwargs(m.nargs))


def given_habit_flags(ns: argparse.Namespace) -> dict:
    """{flag: value} of the accepted Megatron-only flags that the command line gave."""
    flags = {**NO_EFFECT, **MISSING, **megatron_flags()}
    return {flag: getattr(ns, _dest(flag)) for flag in flags if hasattr(ns, _dest(flag))}


def _group(flag: str) -> str:
    m = megatron_flags().get(flag)
    return f" (Megatron-LM group \"{m.group}\")" if m else ""


def _shown_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def check_missing_features(given: dict, tp: int, pp: int, dp: int) -> None:
    """Raise ConfigError for a lacking feature asked for at a value where it would act."""
    for flag, value in given.items():
        shown = flag if value is True else f"{flag} {_shown_value(value)}"
        if flag in MISSING:
            _, reason, noop = MISSING[flag]
            if noop is None or not _is_noop(noop, value, tp, pp, dp):
                raise ConfigError(f"{shown}{_group(flag)}: {reason}")
        elif flag not in NO_EFFECT:
            kind, reason, noop = answer(flag)
            if kind == REFUSED and _shown_value(value) not in noop:
                raise ConfigError(f"{shown}{_group(flag)}: {reason}")


def _is_noop(noop, value, tp: int, pp: int, dp: int) -> bool:
    """Whether the value is one where Megatron does nothing; a value that is not even a number
    (e.g. --context-parallel-size two) is not."""
    try:
        return bool(noop(value, tp, pp, dp))
    except (TypeError, ValueError):
        return False


def habit_notes(given: dict) -> list:
    """One start-up line per accepted flag, saying why it has no effect."""
    lines = []
    for flag, value in given.items():
        shown = flag if value is True else f"{flag} {_shown_value(value)}"
        if flag in NO_EFFECT:
            reason = NO_EFFECT[flag][1]
        elif flag in MISSING:
            reason = "a no-op at this layout, as in Megatron-LM"
        else:
            kind, reason, _ = answer(flag)
            reason = reason if kind == NONE else "a no-op at this value, as in Megatron-LM"
        lines.append(f" > {shown}: accepted, no effect in megaclap: {reason}")
    return lines
