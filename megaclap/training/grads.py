"""Gradient storage and reductions: data-parallel average overlapped with backward, tied-embedding
sum over the embedding group, global norm over model-parallel ranks, clipping, overflow check.

GradBuffer, per step (a DDP-style reducer on the explicit dp group):

    start(M)    zero the persistent flat buffers; every p.grad is a view into them, so backward
                accumulates in place and no gradient is ever copied or concatenated
    backward    a post-accumulate-grad hook counts each parameter's accumulations; once every
                parameter of a bucket has received all of its step's gradients (M times its
                accumulations per microbatch), the bucket is ready, and ready buckets are
                all-reduced asynchronously in bucket order (the same order on every dp rank)
                while backward goes on
    finish()    check every parameter's count, launch what is left, wait, divide by dp, then
                sum the tied word-embedding grads over the embedding group

Accumulations per microbatch are learned on the first step, as Megatron-LM's DDP does: that
step reduces every bucket in finish() (no overlap), and records each parameter's count over M.
A parameter may accumulate more than once per backward (used in two reentrant-checkpointed
segments), or never (unused: its bucket does not wait for it). Later steps launch a bucket at
its parameters' learned counts and finish() asserts the counts, so a parameter that changes
its count fails loudly instead of being reduced before its last gradient arrived.

Buckets are contiguous slices of one flat buffer per dtype, parameters in reverse registration
order (roughly the order backward produces their gradients), about BUCKET_BYTES each.

Without data parallelism there is nothing to reduce, and the buffers would only cost a memset
and an in-place add of every gradient each step; so by default (flat=None) they exist only with
a dp group. Without them start() sets every p.grad to None and backward creates the grads, as
plain PyTorch's zero_grad(set_to_none=True) does: the same values (0 + g = g), less traffic.

Nothing here reads a value back to the host except `unscale_and_check` (fp16 only): the norm
and the clipping coefficient stay device tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from megaclap.parallel.collectives import all_reduce, ordered_sum, world_all_reduce

BUCKET_BYTES = 32 * 2**20


class _Bucket:
    def __init__(self, flat: torch.Tensor, params: list):
        self.flat, self.params = flat, params  # flat: a contiguous slice of a GradBuffer buffer
        self.waiting, self.work = len(params), None


class GradBuffer:
    """Persistent gradient buffers of one stage and their data-parallel reduction."""

    def __init__(self, stage: torch.nn.Module, pstate, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True,
                 flat: Optional[bool] = None):
        if bucket_bytes <= 0:
            raise ValueError(f"gradient bucket size must be positive, got {bucket_bytes} bytes (--ddp-bucket-size)")
        self.stage, self.ps, self.overlap = stage, pstate, overlap
        self.flat = pstate.dp.group is not None if flat is None else flat
        if pstate.dp.group is not None and not self.flat:
            raise ValueError("a data-parallel gradient reduction needs the flat buffers (flat=True)")
        self.params = [p for p in stage.parameters() if p.requires_grad]
        self.buffers: list[torch.Tensor] = []
        self.buckets: list[_Bucket] = []
        self.views: dict = {}      # id(param) -> its grad view
        self.bucket_of: dict = {}  # id(param) -> bucket index
        by_dtype: dict = {}
        for p in reversed(self.params):
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, params in by_dtype.items() if self.flat else ():
            self._allocate(dtype, params, bucket_bytes)
        self.microbatches, self.counts, self.next_launch, self.active = 1, {}, 0, False
        self.per_microbatch: Optional[dict] = None  # id(param) -> accumulations per microbatch (learned)
        self.names = {id(p): n for n, p in stage.named_parameters()}
        self.launch_log: list = []  # (bucket index, hooks fired so far): for tests and benchmarks
        self.hooks_fired = 0
        self._handles = []
        if pstate.dp.group is not None and overlap:
            self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _allocate(self, dtype, params: list, bucket_bytes: int) -> None:
        flat = torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
        self.buffers.append(flat)
        offset, start, members, size = 0, 0, [], 0
        for p in params:
            self.views[id(p)] = flat[offset: offset + p.numel()].view_as(p)
            self.bucket_of[id(p)] = len(self.buckets)
            offset += p.numel()
            members.append(p)
            size += p.numel() * p.element_size()
            if size >= bucket_bytes or p is params[-1]:
                self.buckets.append(_Bucket(flat[start:offset], members))
                start, members, size = offset, [], 0

    # --- per step -------------------------------------------------------------------------------
    def start(self, microbatches: int) -> None:
        """Zero the grads (as views into the buffers; None without them) before a step of
        `microbatches` backwards."""
        for flat in self.buffers:
            flat.zero_()
        for p in self.params:
            view = self.views.get(id(p))
            if view is None:
                p.grad = None
            elif p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view  # someone replaced or dropped it: point it back into the buffer
        self.microbatches, self.counts, self.next_launch, self.active = microbatches, {}, 0, True
        self.launch_log, self.hooks_fired = [], 0
        learned = self.per_microbatch
        for b in self.buckets:  # the first step (nothing learned) launches everything in finish()
            b.waiting = len(b.params) if learned is None else sum(learned[id(p)] > 0 for p in b.params)
            b.work = None

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self.active:
            return
        self.hooks_fired += 1
        n = self.counts.get(id(p), 0) + 1
        self.counts[id(p)] = n
        if self.per_microbatch is None:
            return  # first step: only count
        due = self.per_microbatch[id(p)] * self.microbatches
        if n == due:  # this parameter's last accumulation of the step
            self.buckets[self.bucket_of[id(p)]].waiting -= 1
            self._launch_ready()
        elif n > due:
            raise RuntimeError(self._count_message(p, n))

    def _launch_ready(self, force: bool = False) -> None:
        """All-reduce ready buckets asynchronously, strictly in bucket order."""
        while self.next_launch < len(self.buckets):
            b = self.buckets[self.next_launch]
            if b.waiting > 0 and not force:
                return
            b.work = dist.all_reduce(b.flat, group=self.ps.dp.group, async_op=True)
            self.launch_log.append((self.next_launch, self.hooks_fired))
            self.next_launch += 1

    def _count_message(self, p: torch.Tensor, n: int) -> str:
        per = self.per_microbatch[id(p)]
        return (f"gradient of {self.names.get(id(p), 'a parameter')} accumulated {n} times in "
                f"{self.microbatches} microbatches, but the first step learned {per} per microbatch "
                f"({per * self.microbatches} expected): its data-parallel bucket would be reduced with a "
                "partial gradient (every step must use each parameter equally often)")

    def _check_counts(self) -> None:
        """First step: learn accumulations per microbatch; later: assert them."""
        m = self.microbatches
        if self.per_microbatch is None:
            uneven = [p for p in self.params if self.counts.get(id(p), 0) % m]
            if uneven:
                p = uneven[0]
                raise RuntimeError(f"gradient of {self.names.get(id(p))} accumulated {self.counts[id(p)]} times "
                                   f"in {m} microbatches: not the same number of times in every microbatch")
            self.per_microbatch = {id(p): self.counts.get(id(p), 0) // m for p in self.params}
            return
        for p in self.params:
            n = self.counts.get(id(p), 0)
            if n != self.per_microbatch[id(p)] * m:
                raise RuntimeError(self._count_message(p, n))

    def finish(self) -> None:
        """Complete the dp average (and the tied-embedding sum) after the step's last backward."""
        self.active = False
        for p in self.params if not self.flat else ():
            if p.grad is None:  # unused this step: a zero grad, as in the buffers
                p.grad = torch.zeros_like(p)
        if self.ps.dp.group is not None:
            if self._handles:
                self._check_counts()
            self._launch_ready(force=True)
            for b in self.buckets:
                b.work.wait()
                b.work = None
            for flat in self.buffers:
                flat.div_(self.ps.dp.size)
        sum_tied_embedding(self.stage, self.ps)

    def grads(self) -> list[torch.Tensor]:
        return [self.views[id(p)] if self.flat else p.grad for p in self.params]

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def sum_tied_embedding(stage, pstate) -> None:
    """Sum the tied word-embedding grads of the first and last stage (pp > 1)."""
    if stage.tied and pstate.pp_size > 1 and (stage.pre_process or stage.post_process):
        weight = stage.embedding.word_embeddings.weight if stage.pre_process else stage.output_layer.weight
        all_reduce(weight.grad, pstate.embedding.group)


def _counts_for_norm(stage, name: str, p: torch.Tensor, tp_rank: int) -> bool:
    """Count each logical parameter once: replicated tensors on tp rank 0 only, tied copy never."""
    if stage.is_tied_copy(name):
        return False
    return getattr(p, "tp_partition", None) is not None or tp_rank == 0


def clip_grad_norm(stage, pstate, max_norm: float) -> torch.Tensor:
    """Global L2 norm over all model-parallel ranks (a 0-dim fp32 device tensor, never read here;
    the squares are summed in rank order, so every layout and an emulated pipeline agree bit for bit);
    grads are scaled by min(1, max_norm / (norm + 1e-6)) when max_norm > 0, on the device."""
    counted = [p.grad for name, p in stage.named_parameters()
               if p.grad is not None and _counts_for_norm(stage, name, p, pstate.tp_rank)]
    if counted:
        norms = torch._foreach_norm(counted, 2, dtype=torch.float32)
        sq = torch.stack(norms).square().sum()
    else:
        sq = torch.zeros((), dtype=torch.float32, device=pstate.device)
    norm = ordered_sum(sq.reshape(1), pstate.mp)[0].sqrt()  # the same bits in every layout
    if max_norm > 0:
        grads = [p.grad for p in stage.parameters() if p.grad is not None]
        coeff = (max_norm / (norm.double() + 1e-6)).clamp(max=1.0).float()
        torch._foreach_mul_(grads, coeff)
    return norm


def unscale_and_check(stage, pstate, scale: float, extra: Optional[torch.Tensor] = None) -> bool:
    """fp16: divide every grad by the loss scale and test them for inf/nan in one fused pass per
    dtype; True on every rank if any model-parallel rank overflowed. `extra` (the pipeline
    Channels' finite check, NaN when a Channel carried a non-finite value) joins the same flag;
    it differs between dp replicas, so then the flag is reduced over the whole world. Its one
    host read is the step's only sync under fp16 (the optimizer, LR and loss-scale updates
    depend on it)."""
    found = torch.zeros(1, dtype=torch.float32, device=pstate.device)
    inv = torch.full((1,), 1.0 / scale, dtype=torch.float32, device=pstate.device)
    by_dtype: dict = {}
    for p in stage.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    if extra is not None:
        found += (~torch.isfinite(extra)).float()
    return bool(any_rank(found, pstate, world=extra is not None).item())


def any_rank(flag: torch.Tensor, pstate, world: bool = True) -> torch.Tensor:
    """MAX of a device flag over the whole job (world=True) or the model-parallel group; in place,
    no host read. Grads are dp-averaged, so a flag derived from them alone needs only the mp group.
    In an emulated pipeline the world is its stages, then the processes (world_all_reduce)."""
    if world and pstate.dp_size > 1:
        world_all_reduce(flag, pstate, "max")
    else:
        all_reduce(flag, pstate.mp.group, "max")
    return flag


def all_reduce_coalesced(tensors: list[torch.Tensor], group, average_over: int = 1,
                         bucket_bytes: Optional[int] = None) -> None:
    """Sum (then divide) tensors in place over a group after backward, in concatenated buckets
    (the reduction before GradBuffer; kept as the reference its tests compare against)."""
    if group is None or not tensors:
        return
    limit = bucket_bytes or BUCKET_BYTES
    bucket, size = [], 0
    for i, t in enumerate(tensors):
        bucket.append(t)
        size += t.numel() * t.element_size()
        if size >= limit or i == len(tensors) - 1:
            flat = torch.cat([x.reshape(-1) for x in bucket])
            dist.all_reduce(flat, group=group)
            if average_over > 1:
                flat.div_(average_over)
            offset = 0
            for x in bucket:
                x.copy_(flat[offset: offset + x.numel()].view_as(x))
                offset += x.numel()
            bucket, size = [], 0
