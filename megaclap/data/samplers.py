"""Which samples make up each global batch: few-epoch, online, and lazy sampling.

Every data-parallel rank runs the same sampler over the *global* batch and keeps its own
slice (builder.py), so ranks agree without communicating and a checkpoint's cursor does
not depend on the data-parallel size. All randomness is counter-based: the random numbers
of step t (or draw k) are a pure function of (seed, purpose, t), so a cursor is a handful
of integers plus the online window, and resuming at any step replays exactly the sequence
an uninterrupted run would have produced.

    FewEpochSampler   ids of E epochs, each a fresh seeded permutation of [0, N);
                      global batch j = positions [j*B, (j+1)*B) of that stream
    DpShardedEpochSampler  the same with each sample bound to one data-parallel rank
                      (AQ-SGD: a sample's reference lives where the sample is processed)
    OnlineSampler     one pass over a growing id stream [0, ...), shuffled inside a
                      bounded window; no id is ever produced twice
    GlobalBatchSampler  lazy sampling on top of either: at step t a fresh batch with
                      probability p (or every tau steps), else the previous batch again
"""

import numpy as np
import torch

_BLOCK = 4096
_TAG_EPOCH, _TAG_WINDOW, _TAG_LAZY, _TAG_SHARD = 0xE90C, 0x3B0F, 0x1A2F, 0x54A2


class DataExhausted(RuntimeError):
    """The sampler has no further global batch; training should stop with this message."""


class CounterUniforms:
    """Uniform numbers u[k] in [0, 1), a pure function of (seed, tag, k), cached by block."""

    def __init__(self, seed, tag):
        self.seed, self.tag = seed, tag
        self._block_id, self._block = None, None

    def _get_block(self, b):
        if b != self._block_id:
            self._block = np.random.default_rng([self.seed, self.tag, b]).random(_BLOCK)
            self._block_id = b
        return self._block

    def take(self, start, count):
        """u[start : start + count] as float64 [count]."""
        if count == 0:
            return np.empty(0)
        b0, b1 = start // _BLOCK, (start + count - 1) // _BLOCK
        if b0 == b1:
            off = start - b0 * _BLOCK
            return self._get_block(b0)[off:off + count].copy()
        parts = [np.random.default_rng([self.seed, self.tag, b]).random(_BLOCK)
                 for b in range(b0, b1 + 1)]
        off = start - b0 * _BLOCK
        return np.concatenate(parts)[off:off + count]


class LazySchedule:
    """Per-step `fresh` flags shared by all ranks: step 0 always; then with probability
    `prob` (seeded, counter-based) or every `period` steps; neither given: every step."""

    def __init__(self, seed, prob=None, period=None):
        if prob is not None and period is not None:
            raise ValueError("--lazy-sampling-prob and --lazy-sampling-period are exclusive; "
                             "drop one")
        if prob is not None and not 0.0 <= prob <= 1.0:
            raise ValueError(f"--lazy-sampling-prob {prob}: must be in [0, 1] (0: the first batch repeats forever)")
        if period is not None and period < 1:
            raise ValueError(f"--lazy-sampling-period {period}: must be >= 1")
        self.prob, self.period = prob, period
        self._u = CounterUniforms(seed, _TAG_LAZY)

    def fresh_mask(self, start, count):
        """Fresh flags of steps [start, start + count) as bool [count]."""
        steps = np.arange(start, start + count)
        if self.period is not None:
            mask = steps % self.period == 0
        elif self.prob is not None:
            mask = self._u.take(start, count) < self.prob
        else:
            mask = np.ones(count, bool)
        return mask | (steps == 0)

    def is_fresh(self, step):
        """Whether step `step` draws a new global batch."""
        return bool(self.fresh_mask(step, 1)[0])

    def count_fresh(self, num_steps):
        """Number of fresh steps among steps [0, num_steps)."""
        return int(self.fresh_mask(0, num_steps).sum())

    def last_fresh(self, step):
        """The last fresh step <= `step` by the schedule alone (step 0 is always fresh)."""
        while step > 0:
            low = max(0, step - _BLOCK + 1)
            hits = np.flatnonzero(self.fresh_mask(low, step - low + 1))
            if len(hits):
                return low + int(hits[-1])
            step = low - 1
        return 0


class FewEpochSampler:
    """E epochs over N samples, each epoch a seeded permutation; batches may straddle
    two epochs (the stream is the concatenation of the epochs' permutations).
    num_epochs=None cycles forever (evaluation)."""

    def __init__(self, num_samples, global_batch_size, seed, num_epochs=None):
        if num_samples < 1:
            raise ValueError("few-epoch sampler needs at least one sample")
        self.num_samples, self.batch = num_samples, global_batch_size
        self.seed, self.num_epochs = seed, num_epochs
        self.consumed = 0
        self._perms = {}

    def _perm(self, epoch):
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, _TAG_EPOCH, epoch])
            ids = np.arange(self.num_samples, dtype=np.int32 if self.num_samples < 2**31 else np.int64)
            rng.shuffle(ids)   # in place: no int64 temporary for int32-sized epochs
            self._perms[epoch] = ids
        return self._perms[epoch]

    def next_global(self, batch=None):
        """Ids of the next global batch, int64 [batch or B]."""
        n, b = self.num_samples, batch or self.batch
        if self.num_epochs is not None and self.consumed + b > self.num_epochs * n:
            raise DataExhausted(
                f"few-epoch sampler exhausted after {self.consumed} samples ({self.num_epochs} "
                f"epochs of {n}); raise --num-epochs or lower --train-iters")
        parts, pos = [], self.consumed
        while pos < self.consumed + b:
            epoch, off = divmod(pos, n)
            take = min(self.consumed + b - pos, n - off)
            parts.append(self._perm(epoch)[off:off + take])
            pos += take
        self.consumed += b
        return np.concatenate(parts).astype(np.int64)

    @property
    def distinct_samples_seen(self):
        return min(self.consumed, self.num_samples)

    def state_dict(self):
        return {"kind": "few-epoch", "consumed": self.consumed}

    def load_state_dict(self, sd):
        self.consumed = int(sd["consumed"])


class DpShardedEpochSampler(FewEpochSampler):
    """Few epochs with each sample bound to one data-parallel rank (AQ-SGD's keying).

    A seeded permutation of [0, N) is cut once into `shards` (= dp size) slices of N // shards
    samples (the remainder, < shards samples, is never drawn); every epoch permutes each slice
    anew. Global batch j is, for every rank r in order, positions [j*b, (j+1)*b) of shard r's
    stream (b = B / shards), so a rank's slice of each batch always comes from its own shard: a
    sample's AQ-SGD reference lives on the one rank that processes it, and each rank's store
    holds N / dp rows at most instead of growing toward N.
    """

    def __init__(self, num_samples, global_batch_size, seed, num_epochs=None, shards=1):
        super().__init__(num_samples, global_batch_size, seed, num_epochs)
        if global_batch_size % shards or num_samples < shards:
            raise ValueError(f"{num_samples} samples and global batch {global_batch_size} cannot be "
                             f"sharded over {shards} data-parallel ranks")
        self.shards, self.shard_size = shards, num_samples // shards
        self._owner = None  # [shards * shard_size] ids, shard r = rows [r*size, (r+1)*size)

    def _shard_perm(self, epoch, r):
        if self._owner is None:
            rng = np.random.default_rng([self.seed, _TAG_SHARD])
            self._owner = rng.permutation(self.num_samples)[: self.shards * self.shard_size]
        key = (epoch, r)
        if key not in self._perms:
            if len(self._perms) >= 2 * self.shards:
                self._perms.pop(next(iter(self._perms)))
            size = self.shard_size
            ids = self._owner[r * size:(r + 1) * size].copy()
            np.random.default_rng([self.seed, _TAG_EPOCH, epoch, r]).shuffle(ids)
            self._perms[key] = ids
        return self._perms[key]

    def next_global(self, batch=None):
        """Ids of the next global batch, int64 [batch or B]: rank r's slice from shard r."""
        batch = batch or self.batch
        if batch % self.shards:
            raise ValueError(f"global batch {batch} cannot be sharded over {self.shards} data-parallel ranks")
        n, b = self.shard_size, batch // self.shards
        start = self.consumed // self.shards
        if self.num_epochs is not None and start + b > self.num_epochs * n:
            raise DataExhausted(
                f"few-epoch sampler exhausted after {self.consumed} samples ({self.num_epochs} epochs of "
                f"{n} samples on each of {self.shards} data-parallel ranks); raise --num-epochs or lower "
                "--train-iters")
        parts = []
        for r in range(self.shards):
            pos = start
            while pos < start + b:
                epoch, off = divmod(pos, n)
                take = min(start + b - pos, n - off)
                parts.append(self._shard_perm(epoch, r)[off:off + take])
                pos += take
        self.consumed += batch
        return np.concatenate(parts).astype(np.int64)

    @property
    def distinct_samples_seen(self):
        return min(self.consumed // self.shards, self.shard_size) * self.shards

    def state_dict(self):
        return {**super().state_dict(), "shards": self.shards}


class RangeSource:
    """A fixed id range [0, n) presented as a stream (for OnlineSampler)."""

    def __init__(self, n):
        self.available = n

    def ensure(self, n):
        return n <= self.available


class OnlineSampler:
    """One pass over a stream of ids, shuffled within a window of `window` ids.

    `source.ensure(n)` makes ids [0, n) available (opening shards as needed) and says
    whether the stream reaches that far. Each draw takes a seeded-random id out of the
    window and refills its slot with the next id of the stream, so memory is O(window)
    whatever the corpus size, and no id is produced twice.
    """

    def __init__(self, source, global_batch_size, seed, window=10000):
        if window < 1:
            raise ValueError(f"--shuffle-window {window}: must be >= 1")
        self.source, self.batch, self.window = source, global_batch_size, window
        self.consumed, self.next_id, self.draws = 0, 0, 0
        self.buffer = []
        self._u = CounterUniforms(seed, _TAG_WINDOW)

    def _fill(self):
        want = self.next_id + self.window - len(self.buffer)
        self.source.ensure(want)
        stop = min(want, self.source.available)
        self.buffer.extend(range(self.next_id, stop))
        self.next_id = max(self.next_id, stop)

    def next_global(self, batch=None):
        """Ids of the next global batch, int64 [B]; DataExhausted when fewer than B remain."""
        batch = batch or self.batch
        self._fill()
        short = batch - len(self.buffer)
        if short > 0 and not self.source.ensure(self.next_id + short):
            raise DataExhausted(f"online stream exhausted after {self.consumed} samples; "
                                "add data or lower --train-iters")
        u = self._u.take(self.draws, batch)
        out = np.empty(batch, np.int64)
        buf = self.buffer
        for k in range(batch):
            j = int(u[k] * len(buf))
            out[k] = buf[j]
            if self.source.ensure(self.next_id + 1):
                buf[j] = self.next_id
                self.next_id += 1
            else:
                buf[j] = buf[-1]
                buf.pop()
        self.draws += batch
        self.consumed += batch
        return out

    @property
    def distinct_samples_seen(self):
        return self.consumed

    def state_dict(self):
        return {"kind": "online", "consumed": self.consumed, "next_id": self.next_id,
                "draws": self.draws, "buffer": torch.tensor(self.buffer, dtype=torch.int64)}

    def load_state_dict(self, sd):
        self.consumed, self.next_id = int(sd["consumed"]), int(sd["next_id"])
        self.draws = int(sd["draws"])
        self.buffer = [int(i) for i in sd["buffer"].cpu().tolist()]
        self.source.ensure(self.next_id)


class GlobalBatchSampler:
    """Lazy sampling over a base sampler: returns (global ids [B], fresh) per step.

    When the schedule says not fresh, the previous global batch is returned again (same
    ids, same order) and the base sampler does not advance.
    """

    def __init__(self, base, schedule):
        self.base, self.schedule = base, schedule
        self.step = 0
        self.last_ids = None
        self.drawn = 0  # the step that drew last_ids (dropout masks follow it: model/dropout.py)

    def next(self, batch=None):
        """(ids int64 [batch or B], fresh) of step `self.step`, then advance (a new batch size
        always draws fresh). `self.drawn` is then the step that drew the returned batch."""
        fresh = self.schedule.is_fresh(self.step) or self.last_ids is None
        fresh = fresh or (batch is not None and batch != len(self.last_ids))
        if fresh:
            self.last_ids = self.base.next_global(batch)
            self.drawn = self.step
        self.step += 1
        return self.last_ids, fresh

    @property
    def distinct_samples_seen(self):
        return self.base.distinct_samples_seen

    def state_dict(self):
        last = None if self.last_ids is None else torch.from_numpy(self.last_ids.copy())
        return {"step": self.step, "last_ids": last, "drawn": self.drawn, "base": self.base.state_dict()}

    def load_state_dict(self, sd):
        if sd["base"]["kind"] != self.base.state_dict()["kind"]:
            raise ValueError(f"data cursor is for the {sd['base']['kind']} sampler; resume "
                             "with the same --online setting")
        self.step = int(sd["step"])
        self.last_ids = None if sd["last_ids"] is None else sd["last_ids"].cpu().numpy().copy()
        # cursors saved before "drawn" existed: the schedule's last fresh step (exact unless a
        # batch-size change forced a draw since)
        self.drawn = (int(sd["drawn"]) if "drawn" in sd
                      else self.schedule.last_fresh(max(self.step - 1, 0)))
        self.base.load_state_dict(sd["base"])
