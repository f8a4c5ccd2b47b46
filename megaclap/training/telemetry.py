"""Compression telemetry: per boundary and direction, summed over the pipeline group so the
logging rank (last stage) can report what every stage sent.

Array layout (pp-1, 2, 5): [boundary, fwd|bwd, (raw bytes, payload bytes, rel-err sum, sends,
reference memory bytes)]. Each Channel's counters are reset after each gather.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megaclap.parallel.collectives import all_reduce

DIRS = ("fwd", "bwd")
RAW, PAYLOAD, ERR, SENDS, REF = range(5)


def gather(p2p, pstate) -> torch.Tensor:
    """Sum this interval's sender-side counters over the pp group; reset the Channels."""
    out = torch.zeros(max(1, pstate.pp_size - 1), 2, 5, dtype=torch.float64)
    for (b, d, _), ch in p2p.channels.items():
        s = ch.stats
        if s.steps == 0:
            continue
        row = out[b, DIRS.index(d)]
        row[RAW] += s.raw_bytes
        row[PAYLOAD] += s.payload_bytes
        row[ERR] += s.rel_err_mean * s.steps
        row[SENDS] += s.steps
        row[REF] += s.ref_memory_bytes
        s.reset()
    if pstate.pp.group is not None:
        dev = out.to(pstate.device) if pstate.device.type == "cuda" else out
        out = all_reduce(dev, pstate.pp.group).cpu()
    if pstate.tp.group is not None:  # tp ranks each send 1/tp of a boundary: sum them (not REF)
        dev = out[..., :REF].contiguous().to(pstate.device)
        dist.all_reduce(dev, group=pstate.tp.group)
        out[..., :REF] = dev.cpu()
    return out


def _summary(arr: torch.Tensor, d: int) -> tuple[float, float]:
    tot = arr[:, d].sum(0)
    return float(tot[PAYLOAD] / max(tot[RAW], 1)), float(tot[ERR] / max(tot[SENDS], 1))


def log_fields(arr: torch.Tensor) -> str:
    fr, fe = _summary(arr, 0)
    br, be = _summary(arr, 1)
    sent, raw = float(arr[:, :, PAYLOAD].sum()), float(arr[:, :, RAW].sum())
    return (f" pp fwd ratio: {fr:.4f} | pp bwd ratio: {br:.4f} | pp fwd rel err: {fe:.3E} |"
            f" pp bwd rel err: {be:.3E} | pp bytes sent: {sent:.4E} | pp raw bytes: {raw:.4E} |")


def tb_scalars(arr: torch.Tensor) -> dict:
    out = {}
    for b in range(arr.shape[0]):
        for di, d in enumerate(DIRS):
            r = arr[b, di]
            key = f"compression/boundary{b}/{d}"
            out[f"{key}/raw_bytes"] = float(r[RAW])
            out[f"{key}/payload_bytes"] = float(r[PAYLOAD])
            out[f"{key}/ratio"] = float(r[PAYLOAD] / max(r[RAW], 1))
            out[f"{key}/rel_err"] = float(r[ERR] / max(r[SENDS], 1))
            out[f"{key}/ref_memory_bytes"] = float(r[REF])
    return out


def store_rows_by_dp_rank(p2p, pstate):
    """Rows of this stage's AQ-SGD stores (the largest one) on every data-parallel rank, as a
    list [dp] (a dp-group collective: call it on every rank, or on none). None without aqsgd."""
    if p2p is None or not p2p.stores:
        return None
    rows = torch.zeros(pstate.dp_size, dtype=torch.float64, device=pstate.device)
    rows[pstate.dp_rank] = max(st.num_samples for st in p2p.stores.values())
    if pstate.dp.group is not None:
        dist.all_reduce(rows, group=pstate.dp.group)
    return [int(v) for v in rows.tolist()]
