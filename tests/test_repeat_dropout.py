"""Repeated steps repeat (issue 21.1): dropout masks are a function of the samples and of the
fresh step that drew them, so with a frozen model a lazily repeated step sends an exactly zero
delta on every Channel, at tp=2 x pp=2 and across a resume between the fresh step and its repeat.
"""
import torch

from megaclap.compression.channels import Channel
from megaclap.data.samplers import GlobalBatchSampler, FewEpochSampler, LazySchedule
from megaclap.model.dropout import sample_seed
from megaclap.training.checkpointing import Checkpointer
from tests.dist import run_ranks
from tests.train_utils import make_trainer, tiny_args


def _args(ckpt=()):
    extra = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
             "--lr", "0", "--min-lr", "0",  # frozen: AdamW with lr 0 leaves every weight bit-identical
             "--pp-compression-method", "clapping-fu", "--pp-fwd-codec", "topk:0.5", "--pp-bwd-codec", "topk:0.5",
             "--lazy-sampling-period", "2", "--train-iters", "4"]
    argv = tiny_args(layers=2, gbs=4, extra=extra + list(ckpt))
    for flag in ("--hidden-dropout", "--attention-dropout"):
        argv[argv.index(flag) + 1] = "0.3"
    return argv


def _record_deltas():
    """Channel.send wrapper: on repeated steps, the largest |x - m| each sender would compress;
    on fresh steps, the activation stage 0 sends (to show dropout is on)."""
    real, seen = Channel.send, {"delta": {}, "sent": {}}

    def send(ch, x, *, step, fresh, sample_ids=None, measure=True):
        key = (step, ch.boundary, ch.direction, ch.slot)
        if fresh:
            seen["sent"][key] = x.clone()
        else:
            seen["delta"][key] = float((x.float() - ch._ref().float()).abs().max())
        return real(ch, x, step=step, fresh=fresh, sample_ids=sample_ids, measure=measure)
    Channel.send = send
    return seen


def _worker(rank, world, argv, steps, save_after, load):
    seen = _record_deltas()
    tr = make_trainer(rank, world, argv)
    if load:
        Checkpointer(tr.cfg, tr.ps).load(tr)
    batches = []
    for _ in range(steps):
        batch = tr.data.train.next_batch()
        tr.train_step(batch)
        batches.append(batch)
        if tr.iteration == save_after:
            Checkpointer(tr.cfg, tr.ps).save(tr)
    dropout_on = None
    if tr.ps.is_first_stage and not load:  # the boundary tensor with dropout on vs. off
        tr.stage.eval()
        with torch.no_grad():
            plain = tr.stage(tr._microbatches(batches[0])[0].tokens[:, :-1])
        sent = seen["sent"][(0, 0, "fwd", 0)]
        half = sent.shape[1]
        dropout_on = not torch.equal(sent, plain[:, tr.ps.tp_rank * half:(tr.ps.tp_rank + 1) * half])
    return {"delta": seen["delta"], "fresh": [bool(b.fresh) for b in batches],
            "drawn": [b.drawn_step for b in batches], "dropout_on": dropout_on}


def _check_zero_deltas(res, repeated_steps):
    for r in res:
        steps = {step for step, *_ in r["delta"]}
        assert steps == set(repeated_steps), r["delta"]
        assert len(r["delta"]) == len(repeated_steps) * 2  # every rank: one direction, two slots
        assert all(v == 0.0 for v in r["delta"].values()), r["delta"]


def test_repeated_step_sends_zero_delta_at_tp2_pp2():
    """Catches: masks from a generator that moves on between steps (the repeat sees new masks and
    every Channel sends a non-zero delta), masks that differ between tp ranks, or none at all."""
    res = run_ranks(_worker, 4, _args(), 4, None, False)
    assert res[0]["fresh"] == [True, False, True, False] and res[0]["drawn"] == [0, 0, 2, 2]
    _check_zero_deltas(res, [1, 3])
    assert all(r["dropout_on"] for r in res if r["dropout_on"] is not None)


def test_repeated_step_after_a_resume_sends_zero_delta(tmp_path):
    """Catches: the drawing step lost across a checkpoint (the resumed repeat would seed from its
    own step, or from a restored generator state that has moved on)."""
    save = str(tmp_path / "ckpt")
    run_ranks(_worker, 4, _args(["--save", save]), 3, 3, False)   # steps 0-2 (2 fresh), saved at iteration 3
    res = run_ranks(_worker, 4, _args(["--load", save]), 1, None, True)  # step 3, the repeat: new processes
    assert res[0]["fresh"] == [False] and res[0]["drawn"] == [2]
    _check_zero_deltas(res, [3])


def test_sample_seed_depends_on_every_input_and_drawn_step_survives_a_cursor():
    base = sample_seed(3, 10, 2, torch.tensor([5, 6]))
    assert base == sample_seed(3, 10, 2, [5, 6])
    assert len({base, sample_seed(4, 10, 2, [5, 6]), sample_seed(3, 11, 2, [5, 6]),
                sample_seed(3, 10, 3, [5, 6]), sample_seed(3, 10, 2, [5, 7])}) == 5
    sampler = GlobalBatchSampler(FewEpochSampler(100, 4, seed=1), LazySchedule(1, period=3))
    drawn = []
    for _ in range(5):
        sampler.next()
        drawn.append(sampler.drawn)
    assert drawn == [0, 0, 0, 3, 3]
    sd = sampler.state_dict()
    again = GlobalBatchSampler(FewEpochSampler(100, 4, seed=1), LazySchedule(1, period=3))
    again.load_state_dict(sd)
    assert again.drawn == 3
    del sd["drawn"]  # a cursor saved before the field existed: recovered from the schedule
    again.load_state_dict(sd)
    assert again.drawn == 3
