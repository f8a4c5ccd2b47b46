"""A Megatron-LM user's flags: the scaled-down example scripts run, habit flags are accepted and
reported, missing features are errors, --help documents every flag, Megatron's defaults."""
import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megaclap.config import ConfigError, ModelConfig, build_parser, parse_args
from megaclap.config.arguments import ALL_SECTIONS
from megaclap.config.flags import flag_name, help_text
from megaclap.config.habit_flags import MISSING, NO_EFFECT, habit_notes
from megaclap.training.optimizer import LossScaler
from tests.dist import run_ranks

EXAMPLES = Path(__file__).parent / "megatron_examples"
BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "100", "--micro-batch-size", "2", "--mock-data", "--train-iters", "4"]


# --- the examples ------------------------------------------------------------------------------------
def script_flags(script: Path, cwd: Path, *args) -> list:
    """The flags the script hands to pretrain_gpt.py (its arguments: checkpoint and TensorBoard
    directories, then args), captured by a fake torchrun."""
    bindir = cwd / "bin"
    bindir.mkdir()
    (bindir / "torchrun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGV_OUT"\n')
    (bindir / "torchrun").chmod(0o755)
    (cwd / "pretrain_gpt.py").write_text("")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", ARGV_OUT=str(cwd / "argv"))
    subprocess.run(["bash", str(script), str(cwd / "ckpt"), str(cwd / "tb"), *map(str, args)], cwd=cwd, env=env,
                   check=True, timeout=30, capture_output=True)
    argv = (cwd / "argv").read_text().splitlines()
    return argv[next(i for i, a in enumerate(argv) if a.endswith("pretrain_gpt.py")) + 1:]


def real_data(root: Path) -> dict:
    """A small corpus, a GPT-2-style byte-level BPE (vocab.json + merges.txt, and tokenizer.json)
    trained offline on it, and the corpus preprocessed with each, as Megatron users prepare it."""
    import json
    import random

    from tokenizers import ByteLevelBPETokenizer
    from tests.convert_utils import tool
    words = "pipeline stage tensor gradient model data layer batch token loss the a of and to".split()
    rng = random.Random(0)
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) for _ in range(400)]
    root.mkdir()
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(docs, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save_model(str(root))
    (root / "hf").mkdir()
    tok.save(str(root / "hf" / "tokenizer.json"))
    preprocess = tool("tools/preprocess_data.py")
    common = ["--input", str(corpus), "--append-eod", "--log-interval", "0"]
    preprocess.main(common + ["--output-prefix", str(root / "gpt2"), "--tokenizer-type", "GPT2BPETokenizer",
                              "--vocab-file", str(root / "vocab.json"), "--merge-file", str(root / "merges.txt")])
    preprocess.main(common + ["--output-prefix", str(root / "hf"), "--tokenizer-type", "HuggingFaceTokenizer",
                              "--tokenizer-model", str(root / "hf")])
    return {"vocab": root / "vocab.json", "merges": root / "merges.txt", "gpt2": root / "gpt2_text_document",
            "hf_tokenizer": root / "hf", "hf": root / "hf_text_document", "size": tok.get_vocab_size()}


def _run_worker(rank, world, argv):
    from megaclap.training.pretrain import run, setup
    cfg, ps = setup(argv)   # as pretrain_gpt.py: tokenizer defaults and vocabulary, then the process group
    lines = []
    tr = run(cfg, ps, print_fn=lines.append)
    return {"lines": lines, "iteration": tr.iteration, "consumed": tr.consumed_samples,
            "tokenizer": cfg.data.tokenizer_type, "vocab": cfg.model.vocab_size}


@pytest.mark.parametrize("script,consumed", [("train_gpt3_175b_distributed.sh", 2 + 4 + 4 + 4),
                                             ("train_llama3_8b_h100_fp8.sh", 16)])
def test_megatron_example_runs_on_real_data_at_two_processes(tmp_path, script, consumed):
    """The scripts as Megatron ships them, scaled down (tests/megatron_examples/ lists the changes):
    the GPT-3 script names no tokenizer (GPT2BPETokenizer from --vocab-file/--merge-file), the Llama
    script a HuggingFaceTokenizer with --vocab-size 128256 (the tokenizer's size wins)."""
    data = real_data(tmp_path / "data")
    args = ([data["vocab"], data["merges"], data["gpt2"]] if script.startswith("train_gpt3")
            else [data["hf_tokenizer"], data["hf"]])
    argv = script_flags(EXAMPLES / script, tmp_path, *args)
    assert "--tokenizer-type" not in argv or not script.startswith("train_gpt3")
    out = run_ranks(_run_worker, 2, argv)
    log = "\n".join(out[0]["lines"] + out[1]["lines"])
    expected = "GPT2BPETokenizer" if script.startswith("train_gpt3") else "HuggingFaceTokenizer"
    assert (out[0]["tokenizer"], out[0]["vocab"]) == (expected, data["size"])
    assert out[0]["iteration"] == 4 and out[0]["consumed"] == consumed   # step schedule / --train-samples
    assert f"consumed samples: {consumed:12d}" in log, log
    assert "------------------------ arguments ------------------------" in log
    assert re.search(r" > train: [\d,]+ samples, \d+ documents", log), log
    for flag in argv:   # every accepted habit flag of the script gets its start-up line
        if flag in NO_EFFECT:
            assert f" > {flag}" in log, flag
    assert "successfully saved checkpoint" in log and " validation loss at iteration 4 on validation set | " in log


# --- habit flags and missing features -------------------------------------------------------------
def test_habit_flags_accepted_and_reported():
    flags = ["--use-mcore-models", "--transformer-impl", "local", "--use-flash-attn", "--no-masked-softmax-fusion",
             "--log-num-zeros-in-grad", "--ckpt-format", "torch", "--num-workers", "2"]
    cfg = parse_args(BASE + flags).validate(1)
    assert cfg.megatron_flags == {"--use-mcore-models": True, "--transformer-impl": "local", "--use-flash-attn": True,
                                  "--no-masked-softmax-fusion": True, "--log-num-zeros-in-grad": True,
                                  "--ckpt-format": "torch", "--num-workers": "2"}
    notes = habit_notes(cfg.megatron_flags)
    assert len(notes) == 7 and "--transformer-impl local" in notes[1] and NO_EFFECT["--use-flash-attn"][1] in notes[2]
    assert parse_args(BASE).megatron_flags == {}


@pytest.mark.parametrize("flags,world,match", [
    (["--sequence-parallel", "--tensor-model-parallel-size", "2"], 2, "sequence parallelism is not implemented"),
    (["--context-parallel-size", "2"], 2, "context parallelism is not implemented"),
    (["--context-parallel-size", "two"], 1, "context parallelism is not implemented"),  # not a number: not a no-op
    (["--use-distributed-optimizer"], 2, "not sharded over data-parallel ranks"),
    (["--num-layers-per-virtual-pipeline-stage", "1"], 1, "interleaved"),
    (["--fp8-format", "hybrid"], 1, "FP8"),
])
def test_missing_features_are_errors(flags, world, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(BASE + flags).validate(world)


def test_missing_features_at_their_noop_value_are_reported():
    cfg = parse_args(BASE + ["--sequence-parallel", "--context-parallel-size", "1", "--use-distributed-optimizer"])
    cfg.validate(1)   # tp = cp = dp = 1: Megatron itself does nothing
    assert len(habit_notes(cfg.megatron_flags)) == 3


# --- --help ----------------------------------------------------------------------------------------
def test_help_describes_every_flag():
    parser = build_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    for _, cls in ALL_SECTIONS:
        for f in dataclasses.fields(cls):
            flag = flag_name(f)
            assert flag in actions, flag
            assert help_text(cls, f).strip(), f"{cls.__name__}.{f.name} has no docstring"
            assert actions[flag].dest == f.name
    for flag in list(NO_EFFECT) + list(MISSING):
        assert actions[flag].help
    text = parser.format_help()
    assert "--lr-decay-style {constant,linear,cosine,inverse-square-root}" in text
    assert "(default: linear)" in text and "(default: 949,50,1)" in text and "(default: identity)" in text
    assert "tanh-approximated GELU" in text and "--pp-compression-method" in text


# --- defaults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop", ["--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
                                  "--micro-batch-size"])
def test_model_size_flags_are_required(drop):
    argv = BASE[:BASE.index(drop)] + BASE[BASE.index(drop) + 2:]
    with pytest.raises(ConfigError, match=f"{drop} is required"):
        parse_args(argv)
    assert ModelConfig().num_layers == 2   # library use keeps the dataclass default


def test_train_iters_or_samples_required():
    argv = BASE[:-2]
    with pytest.raises(ConfigError, match="--train-iters .or --train-samples. is required"):
        parse_args(argv).validate(1)


def test_megatron_defaults_and_exact_gelu():
    cfg = parse_args(BASE).validate(1)
    assert cfg.optim.lr_decay_style == "linear" and cfg.optim.hysteresis == 2 and not cfg.model.openai_gelu
    from megaclap.model.layers import MLP
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32)
    exact, tanh = MLP(cfg.model, None), MLP(dataclasses.replace(cfg.model, openai_gelu=True), None)
    for p in exact.parameters():
        torch.nn.init.normal_(p, std=0.5)
    tanh.load_state_dict(exact.state_dict())
    h = exact.linear_fc1(x)
    torch.testing.assert_close(exact(x), exact.linear_fc2(F.gelu(h)))
    torch.testing.assert_close(tanh(x), exact.linear_fc2(F.gelu(h, approximate="tanh")))
    assert not torch.equal(exact(x), tanh(x))


def test_fp16_hysteresis():
    s = LossScaler(True, initial=2.0 ** 16, window=3, hysteresis=2)
    s.update(True)
    assert s.scale == 2.0 ** 16          # first overflow tolerated
    s.update(True)
    assert s.scale == 2.0 ** 15          # second one halves
    s.update(True)
    assert s.scale == 2.0 ** 14          # and each further one, until a growth restores the hysteresis
    for _ in range(3):
        s.update(False)
    assert s.scale == 2.0 ** 15
    s.update(True)
    assert s.scale == 2.0 ** 15
    floor = LossScaler(True, initial=2.0, hysteresis=1, min_scale=1.0)
    floor.update(True), floor.update(True)
    assert floor.scale == 1.0


def test_split_quoted_by_bash_and_zero_split_drops_mock_test_set():
    from megaclap.data import build_data_sources
    cfg = parse_args(BASE + ["--split", "'99,1,0'"]).validate(1)
    src = build_data_sources(cfg.data, seq_length=16, micro_batch_size=2, global_batch_size=2, eval_iters=1,
                             vocab_size=100)
    assert src.valid is not None and src.test is None


def test_startup_summary_counts_documents_tokens_and_parameters(tmp_path):
    from megaclap.parallel.state import ParallelState
    from megaclap.training.startup import startup_summary
    from megaclap.training.trainer import Trainer
    from tests.test_gpt_dataset import write_corpus
    prefix, docs = write_corpus(tmp_path / "c", 40, vocab=100)
    argv = [a for a in BASE if a != "--mock-data"] + ["--data-path", prefix, "--split", "90,10,0",
                                                      "--eval-iters", "1", "--use-flash-attn"]
    cfg = parse_args(argv).validate(1)
    tr = Trainer(cfg, ParallelState(1, 1, 1, 0, torch.device("cpu")), print_fn=lambda s: None)
    text = "\n".join(startup_summary(cfg, tr))
    lo, hi = 0, 36   # Megatron's split_document_ranges: round(0.9 * 40) documents for train
    assert f"train: {len(tr.data.train.dataset):,} samples, {hi - lo} documents, "\
           f"{sum(len(d) for d in docs[lo:hi]):,} tokens" in text
    assert " > test: none" in text and " > --use-flash-attn: accepted, no effect" in text
    assert f"total number of parameters: {sum(p.numel() for p in tr.stage.parameters()):,}" in text
    assert " > padded vocab (size: 100) with 28 dummy tokens (new size: 128)" in text
