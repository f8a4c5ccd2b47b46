"""TP=2 and TP=4 equal TP=1: logits, loss and every gradient (fp32, 1e-5), both flavours."""
import pytest
import torch
import torch.nn.functional as F

from megaclap.parallel.state import ParallelState
from megaclap.parallel.tensor_parallel import vocab_parallel_cross_entropy
from tests.common import batch, build, local_view, tiny_model
from tests.dist import run_ranks


def _reference(cfg, tokens):
    model = build(cfg)
    logits = model(tokens[:, :-1])
    loss = model(tokens[:, :-1], tokens[:, 1:]).mean()
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _tp_worker(rank, world, cfg, tokens):
    ps = ParallelState(tp=world, pp=1, world_size=world, rank=rank, device=torch.device("cpu"))
    model = build(cfg, ps.tp)
    logits = model(tokens[:, :-1])
    loss = model(tokens[:, :-1], tokens[:, 1:]).mean()
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_single_process(flavour, tp):
    cfg = tiny_model(flavour, vocab_size=97, num_query_groups=4 if flavour == "llama" else None)
    tokens = batch(cfg)
    ref_logits, ref_loss, ref_grads = _reference(cfg, tokens)
    for rank, (logits, loss, grads) in enumerate(run_ranks(_tp_worker, tp, cfg, tokens)):
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        params = dict(build(cfg, _FakeTP(tp, rank)).named_parameters())
        for name, g in grads.items():
            expect = local_view(ref_grads[name], params[name], tp, rank)
            torch.testing.assert_close(g, expect, rtol=1e-5, atol=1e-5, msg=f"{name} rank {rank}")


class _FakeTP:
    """Shapes of a tp rank without a process group (never used for communication here)."""

    def __init__(self, size, rank):
        self.size, self.rank, self.group, self.ranks = size, rank, None, tuple(range(size))


def test_gqa_llama_tp2_groups():
    cfg = tiny_model("llama", num_attention_heads=4, num_query_groups=2)
    tokens = batch(cfg)
    _, ref_loss, _ = _reference(cfg, tokens)
    out = run_ranks(_tp_worker, 2, cfg, tokens)
    torch.testing.assert_close(out[0][1], ref_loss, rtol=1e-5, atol=1e-5)


def _ce_worker(rank, world, logits, target, vocab):
    ps = ParallelState(tp=world, pp=1, world_size=world, rank=rank, device=torch.device("cpu"))
    local = logits.chunk(world, dim=-1)[rank].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(local, target, ps.tp, vocab)
    loss.sum().backward()
    return loss.detach(), local.grad


@pytest.mark.parametrize("tp", [1, 2])
def test_vocab_parallel_cross_entropy_matches_torch(tp):
    vocab, padded = 37, 40  # three padding columns that must not count
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, padded, generator=g)
    target = torch.randint(0, vocab, (3, 5), generator=g)
    dense = logits[..., :vocab].clone().requires_grad_(True)
    ref = F.cross_entropy(dense.reshape(-1, vocab), target.reshape(-1), reduction="none").view(3, 5)
    ref.sum().backward()
    if tp == 1:
        local = logits.clone().requires_grad_(True)
        outs = [(vocab_parallel_cross_entropy(local, target, None, vocab), local)]
        outs[0][0].sum().backward()
        outs = [(outs[0][0].detach(), local.grad)]
    else:
        outs = run_ranks(_ce_worker, tp, logits, target, vocab)
    full_grad = torch.cat([g for _, g in outs], dim=-1)
    torch.testing.assert_close(outs[0][0], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_grad[..., :vocab], dense.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(full_grad[..., vocab:] == 0)
