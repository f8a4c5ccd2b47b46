"""Launch scripts in examples/pretrain_gpt: the quickstart (QUICK=1), the distributed launcher's
torchrun command, every model config, and a two-"node" torchrun run on one machine."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megaclap.config import parse_args
from megaclap.model.gpt import GPTStage
from megaclap.model.init import init_stage

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "pretrain_gpt"
LAUNCHER = EXAMPLES / "pretrain_gpt_distributed.sh"
CONFIGS = sorted(p.stem for p in (EXAMPLES / "configs").glob("*.sh"))

# Published shapes (layers, hidden, heads) and parameter counts with the config's vocabulary.
PUBLISHED = {
    "gpt2-125m": (12, 768, 12, 124e6),
    "gpt2-350m": (24, 1024, 16, 355e6),
    "gpt2-760m": (24, 1536, 16, 760e6),
    "gpt2-1.3b": (24, 2048, 16, 1.31e9),
    "llama-1b": (16, 2048, 32, 1.50e9),   # Llama-3.2-1B is 1.24B with its tied output layer
}
# Launcher settings a developer's shell might hold; the tests set their own.
LAUNCH_ENV = ("CONFIG", "TP", "PP", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR",
              "MASTER_PORT", "RDZV_BACKEND", "RDZV_ID", "DATA_ARGS", "COMPRESSION_ARGS", "PRECISION",
              "TRAIN_ITERS", "CHECKPOINT_PATH", "TENSORBOARD_DIR", "TORCHRUN", "DRY_RUN", "QUICK",
              "OUT_DIR", "LR_WARMUP_ITERS", "LOG_INTERVAL", "EVAL_INTERVAL", "SAVE_INTERVAL")


def script_env(**values) -> dict:
    """os.environ without launcher settings, this venv's bin first on PATH, plus values."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({k: str(v) for k, v in values.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dry_run(*extra: str, **env) -> tuple[list, list]:
    """The launcher's torchrun command, split into (launcher args, program flags)."""
    out = subprocess.run(["bash", str(LAUNCHER), *extra], env=script_env(DRY_RUN=1, **env),
                         capture_output=True, text=True, check=True, timeout=30)
    argv = shlex.split(out.stdout)
    script = next(i for i, a in enumerate(argv) if a.endswith("pretrain_gpt.py"))
    assert argv[0] == "torchrun" and Path(argv[script]) == EXAMPLES / "pretrain_gpt.py"
    return argv[1:script], argv[script + 1:]


# --- (1) quickstart -------------------------------------------------------------------------------
def test_quickstart_quick_mode(tmp_path):
    """QUICK=1: stdlib corpus -> tokenizer -> .bin/.idx -> PP=2 the recommended slow-link configuration run; loss goes down."""
    out = subprocess.run(["bash", str(EXAMPLES / "quickstart.sh")],
                         env=script_env(QUICK=1, OUT_DIR=tmp_path / "qs", PYTHON=sys.executable),
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"quickstart: first loss ([0-9.]+) final loss ([0-9.]+)", last)
    assert m, last
    first, final = float(m.group(1)), float(m.group(2))
    assert final < first
    ratio = re.search(r"pipeline p2p .* ratio ([0-9.]+)", out.stdout)
    assert ratio and 0.0 < float(ratio.group(1)) < 1.0, out.stdout[-2000:]   # compression saved bytes
    assert re.search(r"validation loss\s+[0-9.]+", out.stdout)
    assert list((tmp_path / "qs" / "tensorboard").rglob("events.out.tfevents.*"))
    for name in ("stdlib_quick.jsonl", "tokenizer_quick.model", "stdlib_quick_text_document.idx"):
        assert (tmp_path / "qs" / name).is_file(), name


# --- (2) the distributed launcher's command line --------------------------------------------------
def test_dry_run_multinode_command():
    # a 7-step run needs a shorter warmup than the script's (a warmup past the run is refused)
    launch, flags = dry_run("--train-iters", "7", "--lr", "1e-4", "--lr-warmup-iters", "1", CONFIG="gpt2-350m",
                            NNODES=2, NODE_RANK=1, MASTER_ADDR="10.1.2.3", MASTER_PORT=29555, NPROC_PER_NODE=8)
    assert launch == ["--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1",
                      "--master_addr", "10.1.2.3", "--master_port", "29555"]
    cfg = parse_args(flags)
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (24, 1024, 16)
    assert cfg.model.ffn_hidden_size == 4096 and cfg.model.seq_length == 1024
    # the config's suggested layout, default data and precision
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (1, 2)
    assert cfg.data.mock_data and cfg.model.vocab_size == 50257 and cfg.optim.bf16
    # flags after the script come last and win over the script's own
    assert cfg.train.train_iters == 7 and cfg.optim.lr == 1e-4
    cfg.validate(16)


def test_dry_run_overrides():
    launch, flags = dry_run(CONFIG="llama-1b", TP=4, PP=1, NPROC_PER_NODE=4, PRECISION="",
                            RDZV_BACKEND="c10d", MASTER_ADDR="head", MASTER_PORT=29400, RDZV_ID="job7",
                            DATA_ARGS="--data-path 0.7 a_text_document 0.3 b_text_document\n"
                                      "  --tokenizer-type SentencePieceTokenizer --tokenizer-model t.model",
                            COMPRESSION_ARGS="--pp-compression-method clapping-fu --pp-fwd-codec topk:0.1",
                            CHECKPOINT_PATH="ckpt", TENSORBOARD_DIR="tb")
    assert launch == ["--nproc_per_node", "4", "--nnodes", "1", "--rdzv_backend", "c10d",
                      "--rdzv_endpoint", "head:29400", "--rdzv_id", "job7"]
    cfg = parse_args(flags)
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (4, 1)
    assert not cfg.optim.bf16 and not cfg.data.mock_data and cfg.model.vocab_size is None
    assert cfg.data.data_path == ["0.7", "a_text_document", "0.3", "b_text_document"]
    assert cfg.data.tokenizer_model == "t.model"
    assert cfg.compression.method == "clapping-fu" and cfg.compression.fwd_codec == "topk:0.1"
    assert cfg.train.save == cfg.train.load == "ckpt" and cfg.train.tensorboard_dir == "tb"


def test_unknown_config_is_refused():
    out = subprocess.run(["bash", str(LAUNCHER)], env=script_env(DRY_RUN=1, CONFIG="gpt-5"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "gpt2-125m" in out.stderr


# --- (3) every model config ---------------------------------------------------------------------
def tiny(model_cfg):
    """The same flavour and layer count with tiny widths, for a real forward pass."""
    heads, groups = model_cfg.num_attention_heads, model_cfg.query_groups
    return dataclasses.replace(model_cfg, hidden_size=8 * heads, ffn_hidden_size=16 * heads,
                               seq_length=16, max_position_embeddings=16, vocab_size=100,
                               num_query_groups=groups if model_cfg.group_query_attention else None)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    _, flags = dry_run(CONFIG=name, NPROC_PER_NODE=8)
    cfg = parse_args(flags)
    m = cfg.model
    if name in PUBLISHED:
        layers, hidden, heads, params = PUBLISHED[name]
        assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (layers, hidden, heads)
    cfg.validate(8)   # the suggested tp x pp fits one 8-GPU node, batch sizes divide
    # world size 1, full shapes on the meta device: no memory, exact parameter count
    one = parse_args(flags + ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1"])
    one.validate(1)
    with torch.device("meta"):
        stage = GPTStage(one.model, None, 0, one.model.num_layers, True, True)
    assert len(stage.decoder.layers) == m.num_layers
    assert stage.embedding.word_embeddings.weight.shape[1] == m.hidden_size
    n = sum(p.numel() for p in stage.parameters())
    if name in PUBLISHED:
        assert abs(n - params) / params < 0.05, f"{name}: {n / 1e6:.1f}M parameters"
    # the same flavour at tiny width, for real: one forward and backward
    small = tiny(one.model)
    stage = GPTStage(small, None, 0, small.num_layers, True, True)
    init_stage(stage, seed=0, tp_size=1, tp_rank=0)
    tokens = torch.randint(0, small.vocab_size, (2, small.seq_length + 1))
    loss = stage(tokens[:, :-1], labels=tokens[:, 1:]).mean()
    loss.backward()
    assert torch.isfinite(loss)


# --- (4) two "nodes" on one machine ---------------------------------------------------------------
def test_two_node_pipeline_on_one_machine(tmp_path):
    """Two torchrun agents (--nnodes 2 --node_rank 0/1, one process each) run PP=2 across them."""
    port = free_port()
    flags = ["--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "64",
             "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2",
             "--global-batch-size", "4", "--vocab-size", "128", "--train-iters", "4",
             "--lr-warmup-iters", "0", "--log-interval", "1", "--eval-interval", "2", "--eval-iters", "1"]
    procs = []
    for node in range(2):
        env = script_env(CONFIG="gpt-tiny", TP=1, PP=2, NNODES=2, NODE_RANK=node, NPROC_PER_NODE=1,
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS=1,
                         TORCHRUN=Path(sys.executable).parent / "torchrun")
        log = open(tmp_path / f"node{node}.log", "w")
        procs.append((subprocess.Popen(["bash", str(LAUNCHER), *flags], env=env, cwd=tmp_path,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=150) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(x[-3000:] for x in logs)
    # rank 0 (node 0) is the first stage and announces the layout; rank 1 (node 1) logs the losses
    assert "world 2 = tp 1 x dp 1 x pp 2" in logs[0]
    assert re.search(r"iteration\s+4/\s+4 .*lm loss", logs[1]), logs[1][-3000:]
    assert "validation loss at iteration 4" in logs[1]
