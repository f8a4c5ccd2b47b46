"""Compression settings as a whole: names that tell the papers' variants from this project's
extensions (the settings an --fp16 run cannot recover from are refused at start-up by
megaclap.config.compression.check_fp16_recovery).

Benchmarks and the ablation report label their runs with `variant(...)`, so a table never
presents an extension as a published method:

    Clapping (Kong et al., arXiv 2509.19029), on activations and gradients alike, with lazy sampling
      Clapping-FU                    fresh batch sent raw, repeats as deltas
      Clapping-FC (zero)             every step a delta; fresh batch against m = 0
      Clapping-FC (previous)         every step a delta; fresh batch against the last m
    AQ-SGD (Wang et al., 2022), in its own setting: several epochs, no lazy sampling; a sample's
      reference is what was sent for it in its previous epoch (activations; gradients direct)
    baselines: direct, ef, ef21 (and none)
    megaclap extensions
      fresh-step codec               Clapping's fresh batch sent with its own codec against 0
                                     (--clapping-fresh-codec, --clapping-fc-init fresh-codec)
      Clapping on one direction      the other direction stateless (e.g. gradients direct)
      AQ-SGD with lazy sampling      the reference of a repeated sample is its previous step's
"""
from __future__ import annotations

from megaclap.config.compression import default_bwd_method

PAPER, BASELINE, EXTENSION = "paper", "baseline", "megaclap extension"
_CLAPPING = ("clapping-fu", "clapping-fc")


def _clapping_name(method: str, fc_init: str) -> str:
    return "Clapping-FU" if method == "clapping-fu" else f"Clapping-FC ({fc_init})"


def variant(method: str, bwd_method=None, fc_init: str = "zero", fresh_codec=None,
            lazy: bool = False) -> tuple:
    """(label, origin) of a compression setting; origin is PAPER, BASELINE or EXTENSION.
    lazy: lazy sampling is on (p < 1 or a period > 1)."""
    bwd = default_bwd_method(method) if bwd_method is None else bwd_method
    reuse = ", lazy sampling" if lazy else ""
    if method in _CLAPPING or bwd in _CLAPPING:
        name = _clapping_name(method if method in _CLAPPING else bwd, fc_init)
        reuse = reuse or ", no lazy sampling"
        if fresh_codec is not None or fc_init == "fresh-codec":
            return f"Clapping, fresh-step codec {fresh_codec}{reuse}", EXTENSION
        if method != bwd:
            side, other = (("activations", f"gradients {bwd}") if method in _CLAPPING
                           else ("gradients", f"activations {method}"))
            return f"{name} on {side} only, {other}{reuse}", EXTENSION
        return f"{name}, both directions{reuse}", PAPER
    if method == "aqsgd" or bwd == "aqsgd":
        if lazy:
            return "AQ-SGD with lazy sampling (reference from the sample's previous step)", EXTENSION
        return "AQ-SGD, multi-epoch (reference from the sample's previous epoch)", PAPER
    name = method if method == bwd else f"{method} / {bwd} (fwd / bwd)"
    return f"{name}{reuse}", BASELINE


def variant_of(compression, data) -> tuple:
    """variant() of a CompressionConfig and DataConfig."""
    lazy = (data.lazy_sampling_prob is not None and data.lazy_sampling_prob < 1) or \
        (data.lazy_sampling_period is not None and data.lazy_sampling_period > 1)
    return variant(compression.method, compression.bwd_method, compression.clapping_fc_init,
                   compression.clapping_fresh_codec, lazy)
