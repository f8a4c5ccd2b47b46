"""tools/ablate.py end to end: a two-cell grid of tiny PP=2 torchrun runs on mock data gives the
CSV, the markdown table and the plots; a second call skips both cells (their result.json
exists). About 30 s on two CPU cores."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.ablate import Cell, expand_cells, to_flags

REPO = Path(__file__).resolve().parents[1]
GRID = {
    "name": "test",
    "data": {"mock": True, "vocab_size": 128},
    "launch": {"nproc": 2, "tp": 1, "pp": 2, "timeout_s": 120},
    "train": {"train_iters": 6, "log_interval": 2, "eval_interval": 3, "eval_iters": 1},
    "models": {"micro": {"config": "gpt-tiny", "num_layers": 2, "hidden_size": 32,
                         "num_attention_heads": 2, "ffn_hidden_size": 64, "seq_length": 32,
                         "max_position_embeddings": 32, "micro_batch_size": 2,
                         "global_batch_size": 4, "lr": 0.001}},
    "experiments": [{"method": ["none", "clapping-fu"], "fwd_codec": "topk:0.1",
                     "bwd_codec": "quant:8", "p": 0.5}],
}


def _ablate(grid_path: Path, out: Path) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "ablate.py"), "--grid", str(grid_path),
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_expand_cells_axes_and_names():
    grid = {"models": {"a": {}, "b": {}}, "experiments": [
        {"model": ["a", "b"], "method": ["none", "ef21"], "fwd_codec": "topk:0.1", "p": [0.5, None]},
        {"model": "a", "method": "none", "p": 0.5}]}            # a duplicate, dropped
    cells = expand_cells(grid)
    assert len(cells) == 8
    assert all(c.regime == "few-epoch" for c in cells)
    none = [c for c in cells if c.method == "none"]
    assert all(c.fwd_codec == "identity" for c in none)         # codecs have no effect with none
    assert Cell("a", "online", "ef21", None, "topk:0.1", "quant:8", 0.5).name == \
        "a_ef21_topk0.1_quant8_p0.5_online"
    assert to_flags({"num_layers": 2, "online": True, "x": None, "y": False}) == \
        ["--num-layers", "2", "--online"]
    with pytest.raises(ValueError, match="unknown keys"):
        expand_cells({"experiments": [{"methd": "ef"}]})


def test_ablate_two_cells_then_resume(tmp_path):
    grid_path, out = tmp_path / "grid.json", tmp_path / "out"
    grid_path.write_text(json.dumps(GRID))
    first = _ablate(grid_path, out)
    assert first.count("ablate: done ") == 2, first

    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [r["method"] for r in rows] == ["none", "clapping-fu"]
    for r in rows:
        assert int(r["iterations"]) == 6
        assert float(r["val_loss"]) > 0 and float(r["train_loss"]) > 0
        assert int(r["tokens_seen"]) == 6 * 4 * 32
        assert int(r["distinct_samples"]) == int(r["fresh_steps"]) * 4
    none, fu = rows
    assert float(none["ratio"]) == 1.0 and float(fu["ratio"]) < 1.0
    assert float(fu["bytes_sent"]) < float(none["bytes_sent"])
    assert float(fu["ref_memory_bytes"]) > 0 == float(none["ref_memory_bytes"])

    table = (out / "ablation.md").read_text()
    assert table.count("| micro | few-epoch |") == 2 and "clapping-fu" in table
    assert "| Clapping-FU, both directions, lazy sampling [paper] |" in table  # variants labelled
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["loss_vs_bytes_micro_few-epoch.png", "loss_vs_step_micro_few-epoch.png"]
    assert all((out / "plots" / p).stat().st_size > 1000 for p in pngs)

    second = _ablate(grid_path, out)
    assert second.count("ablate: skipped ") == 2 and "ablate: done " not in second, second


def test_an_emulated_cell_prices_links(tmp_path):
    """launch.emulate: the PP=2 cell is one process (--pp-emulate, one torchrun proc); with
    launch.links its result.json carries the time model's summary per link."""
    grid = {**GRID, "launch": {"emulate": True, "pp": 2, "links": "10mbit:5ms,1gbit", "timeout_s": 120},
            "experiments": [{"method": "clapping-fu", "fwd_codec": "topk:0.1", "bwd_codec": "quant:8", "p": 0.5}]}
    grid_path, out = tmp_path / "grid.json", tmp_path / "out"
    grid_path.write_text(json.dumps(grid))
    assert _ablate(grid_path, out).count("ablate: done ") == 1
    [cell] = list((out / "cells").iterdir())
    cmd = (cell / "cmd.txt").read_text()
    assert "--pp-emulate" in cmd and "--nproc_per_node 1" in cmd and "--timing-json" in cmd
    timing = json.loads((cell / "result.json").read_text())["timing"]
    assert timing["emulated"] and list(timing["links"]) == ["ideal", "10mbit:5ms", "1gbit"]
    steps = timing["modeled_step_s"]
    assert steps["10mbit:5ms"]["all"] > steps["1gbit"]["all"] > 0
