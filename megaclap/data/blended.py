"""Several corpora as one sample space: weighted blending, and a lazily opened shard stream.

BlendedDataset (`--data-path 0.7 A 0.3 B`, or several prefixes without weights, which
blends in proportion to their sizes) maps blended sample j to (dataset_index[j],
dataset_sample_index[j]). Dataset i's k-th sample is due at time (k + 0.5) / w_i and the
first N due samples are taken in time order: Megatron's greedy "largest error first"
blending up to tie-breaking, but one lexsort instead of a compiled loop.

ShardStream is the online reader over unweighted prefixes: shards are opened one after
another only when the stream reaches them, so the corpus can exceed RAM and the index of
a shard is built only when needed.
"""

import numpy as np

from .cache import IndexCache


def build_blending_index(weights, size):
    """(dataset_index [size] int16, within-dataset running count [size] int64)."""
    weights = np.asarray(weights, np.float64)
    weights = weights / weights.sum()
    due, owner, count = [], [], []
    for i, w in enumerate(weights):
        k = np.arange(int(np.ceil(w * size)) + 2, dtype=np.int64)
        due.append((k + 0.5) / w)
        owner.append(np.full(len(k), i, np.int16))
        count.append(k)
    due, owner, count = map(np.concatenate, (due, owner, count))
    order = np.lexsort((owner, due))[:size]   # by due time, ties by dataset
    return owner[order], count[order]


class BlendedDataset:
    """Samples of several datasets mixed by weight.

    Args:
        datasets: objects with __len__ and get_batch(ids) (GPTDataset).
        weights: relative weights (normalised here).
        size: number of blended samples. With wrap=True a dataset asked for more samples
            than it has is cycled (upsampling); with wrap=False (online: nothing is ever
            revisited) the blend is cut where the first dataset runs out.
    """

    def __init__(self, datasets, weights, size, cache_dir=None, wrap=True):
        self.datasets = list(datasets)
        self.weights = [float(w) / sum(weights) for w in weights]
        sizes = np.array([len(d) for d in self.datasets], np.int64)
        key = {"components": [d.cache_key for d in self.datasets], "weights": self.weights,
               "size": int(size), "wrap": wrap}
        self.cache_key = key
        cache = IndexCache(cache_dir)
        arrays = cache.load_or_build(
            "BlendedDataset", key, ("dataset_index", "dataset_sample_index"),
            lambda: self._build(sizes, int(size), wrap))
        self.cache_hit = cache.last_hit
        self.dataset_index = arrays["dataset_index"]                # [N] int16
        self.dataset_sample_index = arrays["dataset_sample_index"]  # [N] int64

    def _build(self, sizes, size, wrap):
        owner, count = build_blending_index(self.weights, size)
        if wrap:
            count = count % sizes[owner]
        else:
            over = np.flatnonzero(count >= sizes[owner])
            if len(over):
                owner, count = owner[:over[0]], count[:over[0]]
        return {"dataset_index": owner, "dataset_sample_index": count}

    def __len__(self):
        return len(self.dataset_index)

    def __getitem__(self, j):
        """Blended sample j as int64 [seq_length + 1]."""
        return self.get_batch(np.array([j]))[0]

    def get_batch(self, ids):
        """Blended samples `ids` [n] -> int64 [n, seq_length + 1]."""
        ids = np.asarray(ids, np.int64)
        owner = np.asarray(self.dataset_index[ids])
        local = np.asarray(self.dataset_sample_index[ids])
        out = None
        for d in np.unique(owner):
            rows = np.flatnonzero(owner == d)
            part = self.datasets[d].get_batch(local[rows])
            if out is None:
                out = np.empty((len(ids), part.shape[1]), np.int64)
            out[rows] = part
        return out if out is not None else np.empty((0, 0), np.int64)


class ShardStream:
    """Shards read one after another, each opened on first use.

    Sample ids are global: shard k's samples follow all samples of shards 0..k-1.
    `open_shard(i)` returns the dataset of shard i (or None if its split is empty).
    """

    def __init__(self, num_shards, open_shard):
        self.num_shards, self._open_shard = num_shards, open_shard
        self.shards = []            # opened datasets, in order
        self.offsets = [0]          # offsets[k] = first global id of shards[k]
        self._next_shard = 0

    @property
    def available(self):
        """Sample ids [0, available) are readable now."""
        return self.offsets[-1]

    def ensure(self, n):
        """Open shards until ids [0, n) exist; False if the stream ends first."""
        while self.available < n and self._next_shard < self.num_shards:
            ds = self._open_shard(self._next_shard)
            self._next_shard += 1
            if ds is not None and len(ds):
                self.shards.append(ds)
                self.offsets.append(self.offsets[-1] + len(ds))
        return self.available >= n

    def get_batch(self, ids):
        """Global ids [n] (all < available) -> int64 [n, seq_length + 1]."""
        ids = np.asarray(ids, np.int64)
        starts = np.asarray(self.offsets[:-1], np.int64)
        shard = np.searchsorted(starts, ids, side="right") - 1
        out = None
        for k in np.unique(shard):
            rows = np.flatnonzero(shard == k)
            part = self.shards[k].get_batch(ids[rows] - starts[k])
            if out is None:
                out = np.empty((len(ids), part.shape[1]), np.int64)
            out[rows] = part
        return out if out is not None else np.empty((0, 0), np.int64)
