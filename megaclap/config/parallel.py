"""ParallelConfig: the rank grid, pipeline stages (and how layers are cut into them), the
distributed backend, the simulated links and the one-process pipeline emulation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError
from .links import parse_conventions, parse_links
from .units import parse_bandwidth, parse_latency


@dataclass
class ParallelConfig:
    """Parallel layout. World size = tp * pp * dp, rank order tp-dp-pp (tp fastest)."""

    tensor_model_parallel_size: int = 1
    """--tensor-model-parallel-size: tp, ranks that split each layer's matrices."""
    pipeline_model_parallel_size: int = 1
    """--pipeline-model-parallel-size: pp, ranks that hold consecutive layer ranges (stages)."""
    decoder_first_pipeline_num_layers: Optional[int] = None
    """--decoder-first-pipeline-num-layers: layers on the first stage (uneven split)."""
    decoder_last_pipeline_num_layers: Optional[int] = None
    """--decoder-last-pipeline-num-layers: layers on the last stage (uneven split)."""
    pipeline_schedule: str = field(default="1f1b", metadata={"choices": ("1f1b", "gpipe")})
    """--pipeline-schedule: 1f1b (memory bounded by pp) or gpipe (all forwards first)."""
    distributed_timeout_minutes: float = 10.0
    """--distributed-timeout-minutes: every collective and p2p fails after this long."""
    use_cpu_initialization: bool = False
    """--use-cpu-initialization: initialise full master weights on CPU, then shard (layout-independent)."""
    distributed_backend: Optional[str] = field(default=None, metadata={"choices": ("gloo", "nccl")})
    """--distributed-backend: gloo or nccl; default from the device (nccl on CUDA, gloo on CPU)."""
    ddp_bucket_size: int = 8 * 2**20
    """--ddp-bucket-size: gradient elements per data-parallel all-reduce bucket (smaller: earlier overlap)."""
    sim_link_bandwidth: Optional[str] = None
    """--sim-link-bandwidth: simulate inter-stage links of this rate (200mbit, 1gbit, or bits/s); off when unset."""
    sim_link_latency: Optional[str] = None
    """--sim-link-latency: one-way latency of the simulated links (50ms, 0.05s, or seconds)."""
    link_model: str = "megaclap"
    """--link-model: conventions of the simulated links and of the time model: a preset (megaclap,
    nccl, protocol-nanogpt) then optional overrides, e.g. megaclap,sender=on (wire=pair|inbound,
    latency=pipelined|per-message, sender=on|off, share=rank|tp|stage; see megaclap/parallel/simlink.py)."""
    pp_emulate: bool = False
    """--pp-emulate: hold all --pipeline-model-parallel-size stages in this one process (one device), each
    stage boundary's two Channel endpoints kept apart: the losses of the multi-process run. Launch
    tp x dp processes (one on one GPU); --sim-links gives the step time over links."""
    sim_links: Optional[str] = None
    """--sim-links: links to price with the time model from this run's measured stage and codec times and
    payload bytes, e.g. 200mbit:50ms,1gbit:10ms (each BW[:LATENCY][@PRESET]); modeled step time and
    tokens/s per link go to the log line, TensorBoard and --timing-json."""

    def __post_init__(self):
        if self.sim_link_bandwidth is not None:
            parse_bandwidth(self.sim_link_bandwidth)
        if self.sim_link_latency is not None:
            parse_latency(self.sim_link_latency)
        conventions = parse_conventions(self.link_model)
        if self.sim_links is not None:
            parse_links(self.sim_links, conventions)

    def grid_world_size(self, world_size: int) -> int:
        """The world of the parallel grid: with --pp-emulate one process holds a whole pipeline."""
        return world_size * self.pipeline_model_parallel_size if self.pp_emulate else world_size


def layer_ranges(num_layers: int, pp: int, first: Optional[int] = None,
                 last: Optional[int] = None) -> list[tuple[int, int]]:
    """[(start, end)] per stage. `first` / `last` pin the first / last stage's layer counts
    (--decoder-first/last-pipeline-num-layers); the remaining layers split evenly."""
    counts = [None] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        if pp == 1 and first is not None and first != last:
            raise ConfigError("with one pipeline stage --decoder-first-pipeline-num-layers and "
                              "--decoder-last-pipeline-num-layers must agree")
        counts[-1] = last
    fixed = sum(c for c in counts if c is not None)
    free = [i for i, c in enumerate(counts) if c is None]
    rest = num_layers - fixed
    if rest < 0 or any(c is not None and c < 0 for c in counts):
        raise ConfigError(f"--decoder-first/last-pipeline-num-layers ({first}, {last}) exceed --num-layers {num_layers}")
    if free:
        if rest % len(free):
            flag = "--num-layers" if fixed == 0 else "--decoder-first/last-pipeline-num-layers"
            raise ConfigError(f"{flag}: {rest} layers do not split evenly over {len(free)} pipeline stages "
                              f"(--pipeline-model-parallel-size {pp}); change {flag} or set "
                              "--decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers")
        for i in free:
            counts[i] = rest // len(free)
    elif rest != 0:
        raise ConfigError(f"stage layer counts {counts} do not add up to --num-layers {num_layers}")
    if pp > 1 and any(c == 0 for c in counts):
        raise ConfigError(f"a pipeline stage would get no layers ({counts}); lower --pipeline-model-parallel-size")
    ranges, start = [], 0
    for c in counts:
        ranges.append((start, start + c))
        start += c
    return ranges
