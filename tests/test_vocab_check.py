"""Token ids >= the model's vocabulary are refused at build time, with one line, on every rank.

The corpus is Megatron's older NullTokenizer recipe: `preprocess_data ... --tokenizer-type
NullTokenizer --vocab-size 512 --append-eod --legacy-null-tokenizer` writes ids < 512 and the
end-of-document id 512. Training it with a 512-entry vocabulary used to be an IndexError at pp=2
and silent garbage at tp=2."""
import os

import numpy as np
import pytest

from megaclap.data import build_data_sources
from megaclap.data.builder import token_id_range
from megaclap.config import DataConfig
from megaclap.data.indexed_dataset import IndexedDatasetBuilder
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args

MESSAGE = r"token id 512 is outside the model's vocabulary \[0, 512\) \(--vocab-size"


def null_tokenizer_corpus(prefix, docs=40, vocab=512, length=30):
    rng = np.random.default_rng(0)
    b = IndexedDatasetBuilder(f"{prefix}.bin", np.uint16)
    for _ in range(docs):
        b.add_document(np.append(rng.integers(0, vocab, length), vocab).astype(np.uint16))  # + eod
    b.finalize(f"{prefix}.idx")
    return str(prefix)


def _build(prefix, vocab, cache=None):
    cfg = DataConfig(data_path=[prefix], split="90,10,0", data_cache_path=cache)
    return build_data_sources(cfg, seq_length=16, micro_batch_size=2, global_batch_size=4,
                              train_iters=4, eval_iters=1, vocab_size=vocab)


def test_id_at_vocab_size_is_refused_with_one_line(tmp_path):
    """Catches: no check, a check against the padded vocabulary, an off-by-one (> instead of >=)."""
    prefix = null_tokenizer_corpus(tmp_path / "null")
    with pytest.raises(ValueError, match=MESSAGE) as err:
        _build(prefix, 512)
    assert "\n" not in str(err.value) and "--legacy-null-tokenizer" in str(err.value)
    sources = _build(prefix, 513)  # the older NullTokenizer's vocabulary: --vocab-size + 1
    assert int(sources.train.next_batch().tokens.max()) == 512


def test_token_range_is_cached_with_the_index(tmp_path):
    """Catches: a range computed from the wrong documents/bytes, or not cached (cost every start)."""
    prefix = null_tokenizer_corpus(tmp_path / "null")
    cache = str(tmp_path / "cache")
    sources = _build(prefix, 513, cache)
    assert token_id_range(sources.train.dataset, cache) == (0, 512)
    entries = [f for f in os.listdir(cache) if f.startswith("TokenIdRange")]
    assert len(entries) == 2 * 2  # train and valid split: one array and one description each
    with pytest.raises(ValueError, match=MESSAGE):
        _build(prefix, 512, cache)  # answered from the cache


def _trainer(rank, world, argv):
    make_trainer(rank, world, argv)
    return "built"


@pytest.mark.parametrize("layout", [["--pipeline-model-parallel-size", "2"], ["--tensor-model-parallel-size", "2"]])
def test_every_rank_refuses_before_any_collective(layout, tmp_path):
    """pp=2 (the middle/last stage must not hang waiting for the first) and tp=2."""
    prefix = null_tokenizer_corpus(tmp_path / "null")
    argv = [a for a in tiny_args(layers=2, gbs=4) if a != "--mock-data"]
    argv[argv.index("--vocab-size") + 1] = "512"
    argv += ["--data-path", prefix, "--split", "90,10,0", *layout]
    res = run_ranks(_trainer, 2, argv, timeout_s=60, pg_timeout_s=20, allow_errors=True)
    for r, out in enumerate(res):
        assert out != "built" and "ValueError" in out, f"rank {r}: {out}"
        assert len([line for line in out.splitlines() if "token id 512 is outside" in line]) == 1
