"""What the benchmarks of issues 21 and 23 share: a mean with its 95% interval, a markdown table,
an atomic JSON write."""
from __future__ import annotations

import json
import math
import os
import statistics

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: list) -> tuple:
    """(mean, half-width of the 95% t interval); nan for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def print_table(title: str, header: list, rows: list) -> None:
    """A markdown table under a title line; rows are lists of already formatted cells."""
    print(f"\n{title}")
    for cells in [header, ["---"] * len(header), *rows]:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def write_json(path: str, obj) -> None:
    """Write obj as JSON to path through a temporary file and a rename."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
