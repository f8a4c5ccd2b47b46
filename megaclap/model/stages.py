"""How layers are cut into pipeline stages: contiguous ranges, even by default."""
from __future__ import annotations

from typing import Optional


def layer_ranges(num_layers: int, pp: int, first: Optional[int] = None,
                 last: Optional[int] = None) -> list[tuple[int, int]]:
    """[(start, end)] per stage. `first` / `last` pin the first / last stage's layer counts
    (--decoder-first/last-pipeline-num-layers); the remaining layers split evenly."""
    from megaclap.config import ConfigError
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
