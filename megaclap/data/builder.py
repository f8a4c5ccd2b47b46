"""build_data_sources: from a DataConfig to train/valid/test batch sources.

    train   few-epoch (default) or online sampler, with lazy sampling on top
    valid   few-epoch sampler cycling forever over the valid split, always fresh
    test    same over the test split

Each source yields this data-parallel rank's contiguous slice [r*B/dp, (r+1)*B/dp) of
every global batch of B samples. Sample ids are unique within a split; mock data also
keeps valid/test ids (and so their tokens) disjoint from train's.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from megaclap.config.data import parse_data_path, parse_split
from megaclap.errors import UserFileNotFoundError, UserValueError

from .blended import BlendedDataset, ShardStream
from .gpt_dataset import MockGPTDataset, build_split_dataset
from .cache import IndexCache
from .indexed_dataset import IndexedDataset, bin_path
from .samplers import (DpShardedEpochSampler, FewEpochSampler, GlobalBatchSampler, LazySchedule,
                       OnlineSampler, RangeSource)

MOCK_TRAIN_SAMPLES = 2**20
MOCK_EVAL_SAMPLES = 2**16
_CHUNK = 1 << 24  # tokens per slice when scanning a split for its token id range


@dataclass
class GlobalBatch:
    """This rank's share of one global batch.

    fresh: False when lazy sampling repeats the previous global batch exactly.
    sample_ids: LongTensor [B/dp], global ids within the split.
    tokens: LongTensor [B/dp, seq_length + 1], or None when tokens are not loaded.
    drawn_step: the step that drew this batch (the current step when fresh, else the fresh step
    it repeats); with the sample ids it decides the dropout masks (megaclap/model/dropout.py).
    """

    fresh: bool
    sample_ids: torch.Tensor
    tokens: torch.Tensor = None
    drawn_step: int = 0

    def microbatches(self, micro_batch_size):
        """[(tokens [mbs, s+1] | None, sample_ids [mbs])] in order."""
        n = len(self.sample_ids)
        if micro_batch_size < 1 or n % micro_batch_size:
            raise ValueError(f"--micro-batch-size {micro_batch_size} must divide the per-rank "
                             f"batch {n}")
        out = []
        for i in range(0, n, micro_batch_size):
            toks = None if self.tokens is None else self.tokens[i:i + micro_batch_size]
            out.append((toks, self.sample_ids[i:i + micro_batch_size]))
        return out


class BatchSource:
    """Global batches of one split, sliced for one data-parallel rank."""

    def __init__(self, sampler, dataset, dp_rank, dp_size, load_tokens=True, id_offset=0):
        self.sampler, self.dataset = sampler, dataset
        self.dp_rank, self.dp_size, self.load_tokens = dp_rank, dp_size, load_tokens
        self.id_offset = id_offset
        self._last = None

    def next_batch(self, global_batch_size=None):
        """This rank's GlobalBatch for the next step (of `global_batch_size` samples over all
        ranks, default the sampler's; set by batch-size ramp-up); DataExhausted at the end."""
        ids, fresh = self.sampler.next(global_batch_size)
        drawn = self.sampler.drawn
        if not fresh and self._last is not None:
            return GlobalBatch(False, self._last.sample_ids, self._last.tokens, drawn)
        per_rank = len(ids) // self.dp_size
        local = ids[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]   # [B/dp]
        tokens = None
        if self.load_tokens:
            tokens = torch.from_numpy(self.dataset.get_batch(local))         # [B/dp, s+1]
        self._last = GlobalBatch(fresh, torch.from_numpy(local + self.id_offset), tokens, drawn)
        return self._last

    @property
    def distinct_samples_seen(self):
        """Distinct samples drawn so far across all data-parallel ranks."""
        return self.sampler.distinct_samples_seen

    @property
    def consumed_samples(self):
        """Samples drawn so far (fresh steps x global batch), all ranks."""
        return self.sampler.base.consumed

    @property
    def step(self):
        return self.sampler.step

    def state_dict(self):
        """Exact resume cursor (independent of dp size)."""
        return self.sampler.state_dict()

    def load_state_dict(self, sd):
        self.sampler.load_state_dict(sd)
        self._last = None

    def reset(self):
        """Rewind to the first batch (e.g. to evaluate on the same batches every time)."""
        self.load_state_dict(_initial_state(self.sampler))

    def eval_batches(self, eval_iters):
        """The next `eval_iters` batches (an evaluation reads new batches each time)."""
        for _ in range(eval_iters):
            yield self.next_batch()


class FixedBatchSource:
    """Every sample of a split in order, as whole global batches, the same on every pass
    (--full-validation): evaluations of one model read identical tokens and give one loss.
    The split's last len % global_batch_size samples are left out (fixed shapes)."""

    def __init__(self, dataset, global_batch_size, dp_rank, dp_size, load_tokens=True, id_offset=0):
        self.dataset, self.global_batch_size = dataset, global_batch_size
        self.dp_rank, self.dp_size, self.load_tokens = dp_rank, dp_size, load_tokens
        self.id_offset = id_offset
        self.num_batches = len(dataset) // global_batch_size
        if self.num_batches == 0:
            raise UserValueError(f"--full-validation: the validation split has {len(dataset)} samples, fewer "
                                 f"than one global batch ({global_batch_size}); change --split")

    def state_dict(self) -> None:
        """No cursor: every pass reads the split from its first batch (checkpoints store None)."""
        return None

    def load_state_dict(self, sd) -> None:
        """Nothing to restore; a cursor saved by a run without --full-validation is ignored."""

    def eval_batches(self, eval_iters=None):
        """All batches of the split from the first (eval_iters is ignored)."""
        per_rank = self.global_batch_size // self.dp_size
        for b in range(self.num_batches):
            start = b * self.global_batch_size + self.dp_rank * per_rank
            local = np.arange(start, start + per_rank, dtype=np.int64)       # [B/dp]
            tokens = torch.from_numpy(self.dataset.get_batch(local)) if self.load_tokens else None
            yield GlobalBatch(True, torch.from_numpy(local + self.id_offset), tokens)


def _initial_state(sampler):
    base = sampler.base.state_dict()
    zero = {k: (torch.zeros(0, dtype=torch.int64) if k == "buffer" else 0)
            for k in base if k != "kind"}
    return {"step": 0, "last_ids": None, "drawn": 0, "base": {"kind": base["kind"], **zero}}


@dataclass
class DataSources:
    """The three sources; valid/test are None when there is nothing to evaluate on."""

    train: BatchSource
    valid: BatchSource = None
    test: BatchSource = None


def _blend(datasets, weights, cache_dir, wrap):
    """One dataset from several; weights None blends in proportion to sizes."""
    pairs = [(d, w) for d, w in zip(datasets, weights or [None] * len(datasets))
             if d is not None]
    if not pairs:
        return None
    if len(pairs) == 1:
        return pairs[0][0]
    ds = [d for d, _ in pairs]
    w = [len(d) if weights is None else wt for d, wt in pairs]
    if wrap:
        size = sum(len(d) for d in ds)
    else:  # largest blend in which no dataset is asked for more than it has
        size = int(min(len(d) * sum(w) / wt for d, wt in pairs))
    return BlendedDataset(ds, w, size, cache_dir=cache_dir, wrap=wrap)


def token_id_range(dataset, cache_dir=None):
    """(min, max) token id of a GPTDataset's split, computed once and cached with its index
    (keyed like the index: prefix, file fingerprints, documents). (0, -1) for no tokens."""
    key = {k: dataset.cache_key[k] for k in ("prefix", "idx", "bin", "doc_range")}

    def build():
        ix, (lo, hi) = dataset.indexed, dataset.doc_range
        s0, s1 = int(ix.document_indices[lo]), int(ix.document_indices[hi])
        lo_id, hi_id = 0, -1
        if s1 > s0:
            begin = int(ix.sequence_pointers[s0]) // ix.dtype.itemsize
            end = int(ix.sequence_pointers[s1 - 1]) // ix.dtype.itemsize + int(ix.sequence_lengths[s1 - 1])
            tokens = np.memmap(bin_path(dataset.prefix), dtype=ix.dtype, mode="r")
            lo_id, hi_id = int(tokens[begin]), int(tokens[begin])
            for i in range(begin, end, _CHUNK):  # one pass, a bounded slice at a time
                chunk = tokens[i:min(i + _CHUNK, end)]
                lo_id, hi_id = min(lo_id, int(chunk.min())), max(hi_id, int(chunk.max()))
        return {"token_id_range": np.array([lo_id, hi_id], np.int64)}

    arr = IndexCache(cache_dir).load_or_build("TokenIdRange", key, ("token_id_range",), build)
    return tuple(int(v) for v in arr["token_id_range"])


def check_vocab(dataset, vocab_size, cache_dir=None):
    """Refuse (one line) a split whose token ids fall outside [0, vocab_size): an id >= the
    vocabulary is an IndexError at pp > 1 and silent garbage at tp > 1. Every rank that builds
    the dataset runs this at build time, before any collective of the training loop."""
    if dataset is None or vocab_size is None:
        return dataset
    lo, hi = token_id_range(dataset, cache_dir)
    if hi >= vocab_size or lo < 0:
        bad = hi if hi >= vocab_size else lo
        raise UserValueError(
            f"--data-path {dataset.prefix}: token id {bad} is outside the model's vocabulary [0, {vocab_size}) "
            "(--vocab-size / the tokenizer's size); train with the tokenizer the data was preprocessed with "
            "(a NullTokenizer dataset built with Megatron-LM's older rule, end-of-document id = "
            "--vocab-size, needs --legacy-null-tokenizer)")
    return dataset


def _split_dataset(cfg, prefixes, weights, split_index, seq_length, seed, online=False, vocab_size=None):
    datasets = [check_vocab(build_split_dataset(p, cfg.split, split_index, seq_length, seed,
                                                shuffle=not online, cache_dir=cfg.data_cache_path),
                            vocab_size, cfg.data_cache_path)
                for p in prefixes]
    return _blend(datasets, weights, cfg.data_cache_path, wrap=not online)


def _train_base_sampler(cfg, dataset, source, batch, seed, schedule, train_iters, dp_shards=1):
    """Few-epoch or online base sampler for the train split (dp_shards > 1: each sample bound
    to one data-parallel rank, see DpShardedEpochSampler)."""
    if cfg.online:
        return OnlineSampler(source, batch, seed, cfg.shuffle_window)
    n = len(dataset)
    epochs = cfg.num_epochs
    if train_iters is not None:
        needed = schedule.count_fresh(train_iters) * batch
        n = n // dp_shards * dp_shards  # a sharded sampler never draws the remainder
        if epochs is None:
            epochs = max(1, math.ceil(needed / n))
        elif epochs * n < needed:
            raise UserValueError(f"--num-epochs {epochs} gives {epochs} x {n} samples but "
                             f"--train-iters {train_iters} needs {needed}; raise --num-epochs "
                             "or lower --train-iters")
    if dp_shards > 1:
        return DpShardedEpochSampler(len(dataset), batch, seed, epochs, shards=dp_shards)
    return FewEpochSampler(n, batch, seed, epochs)


def _real_datasets(cfg, seq_length, seed, want_eval, vocab_size=None, full_validation=False):
    """(train dataset, online id source, valid dataset, test dataset) from --data-path
    (full_validation: the valid split in file order, blends not wrapped, independent of the seed)."""
    prefixes, weights = parse_data_path(cfg.data_path)
    for p in prefixes:
        if not IndexedDataset.exists(p):
            raise UserFileNotFoundError(f"--data-path {p}: {p}.bin / {p}.idx not found (give the "
                                    "prefix written by tools/preprocess_data.py)")
    train, source = None, None
    if cfg.online and weights is None:   # shards in order, each opened when reached
        source = ShardStream(len(prefixes), lambda i: check_vocab(build_split_dataset(
            prefixes[i], cfg.split, 0, seq_length, seed, shuffle=False,
            cache_dir=cfg.data_cache_path), vocab_size, cfg.data_cache_path))
        train = source
    else:
        train = _split_dataset(cfg, prefixes, weights, 0, seq_length, seed, online=cfg.online,
                               vocab_size=vocab_size)
        if train is None:
            raise UserValueError(f"--split {cfg.split} leaves no training documents")
        source = RangeSource(len(train))
    valid = _split_dataset(cfg, prefixes, weights, 1, seq_length, seed, online=full_validation,
                           vocab_size=vocab_size) if want_eval else None
    test = _split_dataset(cfg, prefixes, weights, 2, seq_length, seed, vocab_size=vocab_size) if want_eval else None
    return train, source, valid, test


def build_data_sources(data_cfg, *, seq_length, micro_batch_size, global_batch_size,
                       dp_rank=0, dp_size=1, train_iters=None, eval_iters=0,
                       eval_interval=None, seed=1234, vocab_size=None, load_tokens=True,
                       shard_by_dp_rank=False, full_validation=False):
    """Train/valid/test BatchSources for one data-parallel rank (see docs/INTERFACES.md).

    shard_by_dp_rank=True (AQ-SGD at dp > 1): a few-epoch train split binds each sample to one
    data-parallel rank across epochs, so per-sample state stays on the rank that uses it.

    load_tokens=False (middle pipeline stages) yields ids and `fresh` only; eval_iters=0
    skips valid/test. eval_interval is accepted for Megatron parity; evaluation sources
    cycle, so it does not size anything.

    full_validation=True (--full-validation): valid is a FixedBatchSource over the whole split
    (mock data: eval_iters global batches), read identically at every evaluation.
    """
    data_cfg.validate()
    if global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(f"--global-batch-size {global_batch_size} must be a multiple of "
                         f"--micro-batch-size x data-parallel size = {micro_batch_size * dp_size}")
    schedule = LazySchedule(seed, data_cfg.lazy_sampling_prob, data_cfg.lazy_sampling_period)
    want_eval = bool(eval_iters)
    offsets = (0, 0, 0)
    if data_cfg.mock_data:
        train = MockGPTDataset(MOCK_TRAIN_SAMPLES, seq_length, vocab_size, seed)
        source = RangeSource(len(train))
        offsets = (0, MOCK_TRAIN_SAMPLES, MOCK_TRAIN_SAMPLES + MOCK_EVAL_SAMPLES)
        weights = parse_split(data_cfg.split)   # a zero-weight split is absent, as Megatron's mock data
        sizes = (eval_iters * global_batch_size if full_validation else MOCK_EVAL_SAMPLES, MOCK_EVAL_SAMPLES)
        valid, test = [MockGPTDataset(n, seq_length, vocab_size, seed, off) if want_eval and w > 0 else None
                       for n, off, w in zip(sizes, offsets[1:], weights[1:])]
    else:
        train, source, valid, test = _real_datasets(data_cfg, seq_length, seed, want_eval, vocab_size,
                                                    full_validation)
    shards = dp_size if shard_by_dp_rank and not data_cfg.online else 1
    base = _train_base_sampler(data_cfg, train, source, global_batch_size, seed, schedule,
                               train_iters, shards)
    sources = [BatchSource(GlobalBatchSampler(base, schedule), train, dp_rank, dp_size,
                           load_tokens)]
    for ds, off in zip((valid, test), offsets[1:]):
        if ds is None:
            sources.append(None)
            continue
        if full_validation and ds is valid:
            sources.append(FixedBatchSource(ds, global_batch_size, dp_rank, dp_size, load_tokens, off))
            continue
        sampler = GlobalBatchSampler(FewEpochSampler(len(ds), global_batch_size, seed),
                                     LazySchedule(seed))
        sources.append(BatchSource(sampler, ds, dp_rank, dp_size, load_tokens, off))
    return DataSources(*sources)
