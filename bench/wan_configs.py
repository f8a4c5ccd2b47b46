"""What the WAN speedrun compares (configurations, as data) and at which scale (presets).

Every configuration runs with dropout 0. The baseline `dense` sends bf16 on the wire (what a
user's bf16 pipeline sends; on CPU the model computes in fp32 and the wire is cast to bf16);
`dense-fp32` is the old fp32 wire, an extra row. Groups label where an idea comes from:

    baseline     dense (bf16 wire), dense-fp32
    stateless    direct codecs every step (no reference state)
    paper        Clapping-FU / Clapping-FC as in Kong et al. (arXiv 2509.19029), and AQ-SGD
    extension    this project's fresh-step codec (--clapping-fresh-codec)
    high-comp    the high-compression grid: Clapping on both directions, the stateless
                 configuration sending the same bytes (matched bytes), and lazy-only controls
                 (the same codecs with lazy sampling and no reference: what lazy sampling
                 alone costs)
    new-codecs   codecs still being added (hquant:1, lowrank:R, topk:R:q8); skipped with a
                 message while megaclap's parse_codec rejects them
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Q8 = "hquant:8"
BF16 = "cast:bf16"


@dataclass(frozen=True)
class Config:
    """One row of the table: compression methods and codecs per direction, lazy-sampling p."""

    method: str
    bwd_method: Optional[str]
    fwd: str
    bwd: str
    p: Optional[float] = None
    extra: str = ""
    group: str = "stateless"

    def timing_key(self) -> tuple:
        """Configurations with equal keys send the same bytes per kind of step, so one timing
        run (fresh and repeated steps timed apart) serves them all: p only changes how many
        steps of each kind a run has."""
        return (self.method, self.bwd_method, self.fwd, self.bwd, self.extra, self.p is not None)

    def codecs(self) -> tuple:
        return (self.fwd, self.bwd)


def C(method, bwd_method, fwd, bwd, p=None, extra="", group="stateless") -> Config:  # noqa: N802
    return Config(method, bwd_method, fwd, bwd, p, extra, group)


CONFIGS = {
    "dense": C("direct", None, BF16, BF16, group="baseline"),
    "dense-fp32": C("none", None, "identity", "identity", group="baseline"),
    "quant8": C("direct", None, "quant:8", "quant:8"),
    "quant4": C("direct", None, "quant:4", "quant:8"),
    "hquant4": C("direct", None, "hquant:4", Q8),
    "hquant3": C("direct", None, "hquant:3", Q8),
    "hquant2": C("direct", None, "hquant:2", Q8),
    "hquant3-bwd4": C("direct", None, "hquant:3", "hquant:4:sr"),
    "aqsgd": C("aqsgd", "direct", "hquant:4", Q8, 0.5, group="paper"),
    "fu-0.5": C("clapping-fu", "direct", "hquant:4", Q8, 0.5, group="paper"),
    "fu-0.25": C("clapping-fu", "direct", "hquant:4", Q8, 0.25, group="paper"),
    "fc-0.5": C("clapping-fc", "direct", "hquant:3", Q8, 0.5, group="paper"),
    "fc-0.25": C("clapping-fc", "direct", "hquant:3", Q8, 0.25, group="paper"),
    "fresh4-delta2-bwd4-0.5": C("clapping-fu", "direct", "hquant:2", "hquant:4:sr", 0.5,
                                "--clapping-fresh-codec hquant:4", group="extension"),
    "fc-both-0.5": C("clapping-fc", "clapping-fc", "hquant:3", "hquant:4", 0.5, group="high-comp"),
    "fc-both-2bit-0.5": C("clapping-fc", "clapping-fc", "hquant:2", "hquant:2", 0.5, group="high-comp"),
    "hquant3-bwd4-nosr": C("direct", None, "hquant:3", "hquant:4", group="high-comp"),
    "hquant2-both": C("direct", None, "hquant:2", "hquant:2", group="high-comp"),
    "hquant3-bwd4-lazy-0.5": C("direct", None, "hquant:3", "hquant:4", 0.5, group="high-comp"),
    "hquant2-both-lazy-0.5": C("direct", None, "hquant:2", "hquant:2", 0.5, group="high-comp"),
    "dense-lazy-0.5": C("direct", None, BF16, BF16, 0.5, group="high-comp"),
    "fc-both-1bit-0.5": C("clapping-fc", "clapping-fc", "hquant:1", "hquant:2", 0.5, group="new-codecs"),
    "lowrank8": C("direct", None, "lowrank:8", Q8, group="new-codecs"),
    "topk-q8": C("direct", None, "topk:0.1:q8", Q8, group="new-codecs"),
}
# fc-both-* send their codecs' bytes every step: hquant3-bwd4-nosr and hquant2-both are their
# matched-bytes stateless rows; *-lazy-0.5 are their lazy-only controls.
MATCHED = {"fc-both-0.5": "hquant3-bwd4-nosr", "fc-both-2bit-0.5": "hquant2-both"}


def available(names: list, parse_codec) -> tuple:
    """(names whose codecs megaclap parses, {name: why skipped})."""
    ok, skipped = [], {}
    for name in names:
        for spec in CONFIGS[name].codecs():
            try:
                parse_codec(spec)
            except (ValueError, KeyError) as e:
                skipped[name] = f"codec {spec!r} not in this build ({e})"
                break
        else:
            ok.append(name)
    return ok, skipped


@dataclass(frozen=True)
class Preset:
    """A scale: model, data, pipeline, links, seeds, schedules and the measuring rules."""

    name: str
    scale: str                       # the table's label
    model: dict                      # ablate `models:` entry (config name plus sizes)
    data: dict                       # ablate `data:` entry (tools/ablate_data.py)
    pp: int
    train_iters: int                 # the dense schedule (steps); others may run factors of it
    configs: tuple
    links: dict                      # name -> (bandwidth, latency), tc units
    seeds: int = 3
    more_seeds: int = 5              # for configurations within 5% of the best T
    schedule_factors: tuple = (1.0, 1.25, 1.5, 2.0)
    target_fraction: float = 0.95
    eval_coarse: int = 150           # validation every this many steps before the target window
    eval_fine: int = 25              # ... and every this many from fine_from x the run's steps on
    fine_from: float = 0.7
    eval_iters: int = 4              # mock data only: validation batches (real data: the split)
    min_valid_tokens: int = 0        # refuse a corpus/split whose fixed validation set is smaller
    window: int = 10                 # steady state: Protocol NanoGPT's 10-step windows,
    windows: int = 3                 # three consecutive ones
    tol: float = 0.01                # agreeing within 1%
    timing_iters: int = 80           # steps of a separate timing run (per timing key and link)
    timing_warmup: int = 5
    time_in_loss_runs: bool = False  # step times from the loss runs themselves (first link only)
    emulated: bool = False           # needs the one-process emulated pipeline (--pp-emulate)
    peak_tflops: Optional[float] = None   # per device, for MFU
    args: str = "--hidden-dropout 0 --attention-dropout 0"
    extra_links: dict = field(default_factory=dict)


CPU_MODEL = {"config": "gpt-tiny", "num_layers": 4, "hidden_size": 128, "num_attention_heads": 4,
             "ffn_hidden_size": 512, "seq_length": 128, "max_position_embeddings": 128,
             "micro_batch_size": 4, "global_batch_size": 16}
MAIN = ("dense", "dense-fp32", "quant4", "hquant3-bwd4", "fu-0.5", "fc-0.5", "fresh4-delta2-bwd4-0.5",
        "fc-both-0.5", "hquant3-bwd4-nosr", "hquant3-bwd4-lazy-0.5", "dense-lazy-0.5")
PRESETS = {
    # the CI / test smoke run: mock data, tiny model, timing from the loss runs themselves
    "quick": Preset("quick", "smoke test (GPT 2x32, seq 32, mock data)",
                    {**CPU_MODEL, "num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64, "seq_length": 32,
                     "max_position_embeddings": 32, "micro_batch_size": 2, "global_batch_size": 8},
                    {"mock": True, "vocab_size": 512}, pp=2, train_iters=16, configs=("dense", "hquant4"),
                    links={"slow": ("4mbit", "10ms")}, seeds=3, more_seeds=3, schedule_factors=(1.0,),
                    eval_coarse=4, eval_fine=2, fine_from=0.5, eval_iters=4, window=2, windows=3, tol=0.1,
                    timing_warmup=2, time_in_loss_runs=True),
    # two CPU cores: PP=4, GPT 4x128 on the standard-library corpus (>= 1M validation tokens)
    "cpu": Preset("cpu", "CPU (GPT 4x128, seq 128, PP=4, stdlib corpus)", CPU_MODEL,
                  {"build": "stdlib", "vocab_size": 4096, "valid_files": 180}, pp=4, train_iters=600,
                  min_valid_tokens=1_000_000,
                  configs=tuple(n for n, c in CONFIGS.items() if c.group != "new-codecs"),
                  links={"slow": ("2mbit", "10ms"), "moderate": ("20mbit", "10ms")}),
    # GPT-2 124M in 8 emulated stages on one GPU (needs the emulated pipeline, issue 19)
    "gpt2-124m": Preset("gpt2-124m", "GPT-2 124M (seq 1024, PP=8 emulated, bf16, Debian docs corpus)",
                        {"config": "gpt2-125m", "micro_batch_size": 8, "global_batch_size": 64,
                         "precision": "bf16"},
                        {"prefix": "data/debian_docs/debian_docs_text_document",
                         "tokenizer_model": "data/debian_docs/tokenizer.model", "split": "63,37,0"},
                        pp=8, train_iters=400, configs=MAIN[:6], seeds=1, more_seeds=1,
                        min_valid_tokens=9_000_000,
                        links={"pnanogpt": ("200mbit", "50ms"), "fast": ("1gbit", "10ms")},
                        emulated=True, peak_tflops=989.0),
}
