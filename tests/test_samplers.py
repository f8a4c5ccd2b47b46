"""Samplers: few-epoch coverage, dp slices, online stream, lazy sampling, exact resume."""

import argparse
import io

import numpy as np
import pytest
import torch

from megaclap.config.data import DataConfig, add_data_args, parse_data_path
from megaclap.data import DataExhausted, build_data_sources
from megaclap.data.indexed_dataset import IndexedDatasetBuilder
from megaclap.data.samplers import (FewEpochSampler, GlobalBatchSampler, LazySchedule,
                                    OnlineSampler, RangeSource)


def write_corpus(prefix, num_docs, seed=0, max_len=40):
    """A .bin/.idx of random documents (1..max_len tokens)."""
    rng = np.random.default_rng(seed)
    b = IndexedDatasetBuilder(f"{prefix}.bin", np.uint16)
    for _ in range(num_docs):
        b.add_document(rng.integers(0, 50, rng.integers(1, max_len)))
    b.finalize(f"{prefix}.idx")
    return str(prefix), None


def sources(cfg=None, dp_rank=0, dp_size=1, gbs=8, **kw):
    cfg = cfg or DataConfig(mock_data=True)
    args = dict(seq_length=8, micro_batch_size=2, global_batch_size=gbs, dp_rank=dp_rank,
                dp_size=dp_size, train_iters=None, eval_iters=0, seed=11, vocab_size=50)
    args.update(kw)
    return build_data_sources(cfg, **args)


def test_few_epoch_visits_each_sample_once_per_epoch():
    n, b = 50, 8                                 # batches straddle epochs (50 % 8 != 0)
    s = FewEpochSampler(n, b, seed=0, num_epochs=3)
    stream = np.concatenate([s.next_global() for _ in range(3 * n // b)])   # 144 of 150
    for e in range(2):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert len(set(stream[2 * n:].tolist())) == len(stream) - 2 * n
    assert stream[:n].tolist() != stream[n:2 * n].tolist()   # a fresh permutation per epoch
    assert s.distinct_samples_seen == n
    with pytest.raises(DataExhausted, match="--num-epochs"):
        s.next_global()


def test_dp_slices_are_disjoint_and_cover_the_global_batch():
    dp, gbs = 4, 16
    ranks = [sources(dp_rank=r, dp_size=dp, gbs=gbs).train for r in range(dp)]
    whole = sources(gbs=gbs).train
    for _ in range(5):
        parts = [src.next_batch() for src in ranks]
        full = whole.next_batch()
        ids = torch.cat([p.sample_ids for p in parts])
        assert torch.equal(ids, full.sample_ids) and len(set(ids.tolist())) == gbs
        assert torch.equal(torch.cat([p.tokens for p in parts]), full.tokens)
        assert [len(p.sample_ids) for p in parts] == [gbs // dp] * dp


def test_microbatches_split_in_order():
    batch = sources().train.next_batch()
    mbs = batch.microbatches(2)
    assert len(mbs) == 4 and all(t.shape == (2, 9) for t, _ in mbs)
    assert torch.equal(torch.cat([i for _, i in mbs]), batch.sample_ids)
    with pytest.raises(ValueError, match="--micro-batch-size"):
        batch.microbatches(3)
    ids_only = sources(load_tokens=False).train.next_batch()
    assert ids_only.tokens is None and ids_only.microbatches(4)[0][0] is None


def test_online_never_repeats_stays_in_window_and_ends():
    n, b, w = 103, 8, 10
    s = OnlineSampler(RangeSource(n), b, seed=0, window=w)
    seen = []
    with pytest.raises(DataExhausted, match="online stream exhausted after 96 samples"):
        while True:
            seen.extend(s.next_global().tolist())
    assert len(seen) == len(set(seen)) == 96 and max(seen) < n
    assert all(i <= k + w - 1 for k, i in enumerate(seen))       # bounded window
    assert seen != sorted(seen)


def test_online_shards_open_lazily_and_ids_are_global(tmp_path):
    prefixes = [write_corpus(tmp_path / f"s{k}", 60, seed=k)[0] for k in range(3)]
    cfg = DataConfig(data_path=prefixes, split="1,0,0", online=True, shuffle_window=4)
    train = sources(cfg).train
    first = train.next_batch()
    assert len(train.dataset.shards) == 1                          # later shards untouched
    seen = first.sample_ids.tolist()
    with pytest.raises(DataExhausted, match="add data or lower --train-iters"):
        while True:
            batch = train.next_batch()
            seen.extend(batch.sample_ids.tolist())
            for row, i in enumerate(batch.sample_ids.tolist()):
                assert torch.equal(batch.tokens[row], torch.from_numpy(train.dataset.get_batch([i])[0]))
    assert len(train.dataset.shards) == 3 and len(seen) == len(set(seen))
    assert train.distinct_samples_seen == len(seen) >= train.dataset.available - 8


def test_online_weighted_blend_never_repeats(tmp_path):
    a, _ = write_corpus(tmp_path / "a", 80, seed=1)
    b, _ = write_corpus(tmp_path / "b", 40, seed=2)
    cfg = DataConfig(data_path=["0.5", a, "0.5", b], split="1,0,0", online=True, shuffle_window=8)
    train = sources(cfg, gbs=4).train
    seen = []
    with pytest.raises(DataExhausted):
        while True:
            seen.extend(train.next_batch().sample_ids.tolist())
    owner = np.asarray(train.dataset.dataset_index)[seen]
    assert len(seen) == len(set(seen)) and abs(owner.mean() - 0.5) < 0.05


def test_lazy_probability_and_exact_repeats():
    p, steps = 0.3, 4000
    sched = LazySchedule(seed=5, prob=p)
    rate = sched.fresh_mask(1, 100_000).mean()
    assert abs(rate - p) < 5 * np.sqrt(p * (1 - p) / 100_000)
    train = sources(DataConfig(mock_data=True, lazy_sampling_prob=p)).train
    other_rank = sources(DataConfig(mock_data=True, lazy_sampling_prob=p), dp_rank=1, dp_size=2).train
    prev, fresh = None, []
    for t in range(200):
        batch, mate = train.next_batch(), other_rank.next_batch()
        assert batch.fresh == mate.fresh                              # ranks agree, no comms
        fresh.append(batch.fresh)
        if t == 0:
            assert batch.fresh
        if not batch.fresh:
            assert torch.equal(batch.sample_ids, prev.sample_ids)
            assert torch.equal(batch.tokens, prev.tokens)
        prev = batch
    assert train.consumed_samples == 8 * sum(fresh)
    assert sched.count_fresh(steps) == int(sched.fresh_mask(0, steps).sum())


def test_lazy_period_and_flag_conflicts():
    sched = LazySchedule(seed=0, period=4)
    assert np.flatnonzero(sched.fresh_mask(0, 13)).tolist() == [0, 4, 8, 12]
    with pytest.raises(ValueError, match="exclusive"):
        LazySchedule(seed=0, prob=0.5, period=3)
    with pytest.raises(ValueError, match="--lazy-sampling-prob"):
        DataConfig(mock_data=True, lazy_sampling_prob=1.5).validate()
    with pytest.raises(ValueError, match="exclusive"):
        DataConfig(mock_data=True, lazy_sampling_prob=0.5, lazy_sampling_period=2).validate()


def _run(src, steps):
    return [(b.fresh, b.sample_ids.tolist()) for b in (src.next_batch() for _ in range(steps))]


@pytest.mark.parametrize("cfg", [
    dict(),
    dict(lazy_sampling_prob=0.4),
    dict(online=True, shuffle_window=5, lazy_sampling_period=3),
])
def test_resume_at_any_step_continues_the_same_sequence(cfg):
    make = lambda: sources(DataConfig(mock_data=True, **cfg), gbs=4)   # noqa: E731
    steps = 24
    reference = _run(make().train, steps)
    for stop in (0, 1, 5, 13, 23):
        src = make().train
        assert _run(src, stop) == reference[:stop]
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
        buf.seek(0)
        resumed = make().train
        resumed.load_state_dict(torch.load(buf, weights_only=True))
        assert _run(resumed, steps - stop) == reference[stop:]


def test_resume_online_over_shards(tmp_path):
    prefixes = [write_corpus(tmp_path / f"s{k}", 40, seed=k)[0] for k in range(3)]
    cfg = DataConfig(data_path=prefixes, split="1,0,0", online=True, shuffle_window=6)
    reference = _run(sources(cfg, gbs=4).train, 20)
    src = sources(cfg, gbs=4).train
    _run(src, 11)
    resumed = sources(cfg, gbs=4).train
    resumed.load_state_dict(src.state_dict())
    assert _run(resumed, 9) == reference[11:]


def test_epochs_follow_train_iters_and_lazy_rate(tmp_path):
    prefix, _ = write_corpus(tmp_path / "c", 400)
    cfg = DataConfig(data_path=[prefix], split="1,0,0")
    src = sources(cfg, train_iters=1000).train
    n = src.sampler.base.num_samples
    assert src.sampler.base.num_epochs == int(np.ceil(1000 * 8 / n))
    lazy = sources(DataConfig(data_path=[prefix], split="1,0,0", lazy_sampling_period=4),
                   train_iters=1000).train
    assert lazy.sampler.base.num_epochs == int(np.ceil(250 * 8 / n))
    with pytest.raises(ValueError, match="raise --num-epochs or lower --train-iters"):
        sources(DataConfig(data_path=[prefix], split="1,0,0", num_epochs=1), train_iters=1000)


def test_real_data_sources_blend_and_split(tmp_path):
    a, _ = write_corpus(tmp_path / "a", 300, seed=1)
    b, _ = write_corpus(tmp_path / "b", 300, seed=2)
    cfg = DataConfig(data_path=["0.7", a, "0.3", b], split="90,10,0",
                     data_cache_path=str(tmp_path / "cache"))
    s = sources(cfg, eval_iters=2, train_iters=10)
    assert s.test is None and s.valid is not None
    owner = np.asarray(s.train.dataset.dataset_index)
    assert abs(owner.mean() - 0.3) < 0.01
    batch = s.valid.next_batch()
    assert batch.tokens.shape == (8, 9) and batch.fresh
    again = sources(cfg, eval_iters=2, train_iters=10)
    assert again.train.dataset.cache_hit


def test_data_path_parsing_and_config_errors():
    assert parse_data_path(["A"]) == (["A"], None)
    assert parse_data_path(["A", "B"]) == (["A", "B"], None)
    assert parse_data_path(["0.7", "A", "0.3", "B"]) == (["A", "B"], [0.7, 0.3])
    with pytest.raises(ValueError, match="--data-path"):
        parse_data_path(["0.7", "A", "B"])
    with pytest.raises(ValueError, match="--mock-data"):
        DataConfig().validate()
    with pytest.raises(ValueError, match="--num-epochs"):
        DataConfig(mock_data=True, online=True, num_epochs=2).validate()
    with pytest.raises(FileNotFoundError, match="--data-path"):
        sources(DataConfig(data_path=["/nonexistent/prefix"]))
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    ns = parser.parse_args(["--data-path", "0.5", "A", "0.5", "B", "--online",
                            "--lazy-sampling-prob", "0.25", "--split", "98,2,0"])
    cfg = DataConfig.from_args(ns)
    assert cfg.data_path == ["0.5", "A", "0.5", "B"] and cfg.online and cfg.split == "98,2,0"
    assert cfg.lazy_sampling_prob == 0.25 and cfg.shuffle_window == 10000


def test_mock_eval_ids_are_disjoint_from_train():
    s = sources(eval_iters=1)
    train_ids = set(s.train.next_batch().sample_ids.tolist())
    valid, test = s.valid.next_batch(), s.test.next_batch()
    assert not train_ids & set(valid.sample_ids.tolist())
    assert not set(valid.sample_ids.tolist()) & set(test.sample_ids.tolist())
    s.valid.reset()
    assert torch.equal(s.valid.next_batch().tokens, valid.tokens)


def test_global_batch_sampler_without_lazy_is_always_fresh():
    g = GlobalBatchSampler(FewEpochSampler(10, 2, seed=0), LazySchedule(seed=0))
    assert all(g.next()[1] for _ in range(7))
