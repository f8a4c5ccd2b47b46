"""AQ-SGD's store: one file per endpoint (the two ranks of a boundary never share one), exact
resume from a checkpoint of a disk store, and each sample's row living on the dp rank that
processes it."""
import io
import os

import pytest
import torch

from megaclap.compression.store import AqsgdStore, store_path
from megaclap.data.samplers import DpShardedEpochSampler
from megaclap.training import telemetry
from tests.dist import run_ranks
from tests.test_vocab_check import null_tokenizer_corpus
from tests.train_utils import make_trainer, tiny_args

ROW = (4, 8)


def _rows(store, ids):
    return store.read(store.find(ids))


def test_each_endpoint_has_its_own_path():
    """Catches the old name (boundary, direction, dp, tp only): both ends of boundary 0 got one file."""
    fwd_send, fwd_recv = store_path("d", 0, "fwd", 0, 0, 0), store_path("d", 0, "fwd", 1, 0, 0)
    bwd_send, bwd_recv = store_path("d", 0, "bwd", 1, 0, 0), store_path("d", 0, "bwd", 0, 0, 0)
    assert len({fwd_send, fwd_recv, bwd_send, bwd_recv, store_path("d", 0, "fwd", 0, 1, 0)}) == 5
    assert "send" in fwd_send and "recv" in fwd_recv and "send" in bwd_send and "recv" in bwd_recv
    assert store_path(None, 0, "fwd", 0, 0, 0) is None


def test_a_file_in_use_is_refused_not_truncated(tmp_path):
    """Catches: a second store opening the same file truncating the first one's rows."""
    a = AqsgdStore(ROW, torch.float32, "cpu", path=tmp_path)
    a.write(a.insert([7]), torch.ones(1, *ROW))
    b = AqsgdStore(ROW, torch.float32, "cpu", path=tmp_path)
    with pytest.raises(ValueError, match="--aqsgd-store-dir: .* is in use") as err:
        b.insert([7])
    assert "\n" not in str(err.value)
    assert torch.equal(_rows(a, [7]), torch.ones(1, *ROW))
    a.close()
    b.insert([7])  # free again once released


def test_disk_store_checkpoint_is_a_snapshot(tmp_path):
    """Catches a checkpoint that records only the file: rows written after the save (and rows
    appended later) would leak into the resumed run."""
    st = AqsgdStore(ROW, torch.float32, "cpu", path=tmp_path)
    st.write(st.insert(range(20)), torch.arange(20.0).view(20, 1, 1).expand(20, *ROW).contiguous())
    st.commit()
    buf = io.BytesIO()
    torch.save(st.state_dict(), buf)
    st.write(st.find(range(20)), torch.full((20, *ROW), -1.0))  # training goes on after the save
    st.write(st.insert(range(20, 40)), torch.full((20, *ROW), -2.0))
    st.close()
    back = AqsgdStore(ROW, torch.float32, "cpu", path=tmp_path)
    back.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert back.num_samples == 20 and (back.find([25]) < 0).all()
    assert torch.equal(_rows(back, range(20)), torch.arange(20.0).view(20, 1, 1).expand(20, *ROW))


def _losses(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    losses = [tr.train_step(tr.data.train.next_batch())["loss"] for _ in range(steps)]
    return {"last": tr.ps.is_last_stage, "losses": losses}


def test_disk_store_across_the_two_ranks_of_a_boundary(tmp_path):
    """Both ends of boundary 0 on one --aqsgd-store-dir: losses equal the in-memory store's
    (they diverged at step 3 when the receiver's new file truncated the sender's rows)."""
    argv = tiny_args(layers=2, gbs=4, extra=["--pipeline-model-parallel-size", "2", "--pp-compression-method",
                                             "aqsgd", "--pp-fwd-codec", "quant:4", "--lazy-sampling-prob", "0.5"])
    mem = run_ranks(_losses, 2, argv, 4)
    disk = run_ranks(_losses, 2, argv + ["--aqsgd-store-dir", str(tmp_path)], 4)
    assert [r["losses"] for r in mem if r["last"]] == [r["losses"] for r in disk if r["last"]]
    names = sorted(os.listdir(tmp_path))
    assert names == ["aqsgd_b0_fwd_recv_pp1_dp0_tp0", "aqsgd_b0_fwd_send_pp0_dp0_tp0"]


def _dp_worker(rank, world, argv, steps):
    tr = make_trainer(rank, world, argv)
    seen = set()
    for _ in range(steps):
        batch = tr.data.train.next_batch()
        seen |= set(batch.sample_ids.tolist())
        tr.train_step(batch)
    rows = {k: st.num_samples for k, st in tr.p2p.stores.items()}
    return {"dp": tr.ps.dp_rank, "seen": seen, "rows": rows, "n": len(tr.data.train.dataset),
            "reported": telemetry.store_rows_by_dp_rank(tr.p2p, tr.ps)}


def test_dp2_store_rows_per_rank_are_the_rank_s_own_samples(tmp_path):
    """dp=2, pp=2, 2.5 epochs of a 17-sample split: each rank's store holds exactly the samples
    that rank processed, the two ranks' samples are disjoint, and the ablation's figure agrees.
    Catches samples moving between dp ranks each epoch (each store grows toward all 17)."""
    prefix = null_tokenizer_corpus(tmp_path / "tiny", docs=9, vocab=95)
    argv = [a for a in tiny_args(layers=2, gbs=4) if a != "--mock-data"]
    argv += ["--data-path", prefix, "--split", "100,0,0", "--pipeline-model-parallel-size", "2",
             "--pp-compression-method", "aqsgd", "--pp-fwd-codec", "quant:8"]
    res = run_ranks(_dp_worker, 4, argv, 10)
    assert res[0]["n"] == 17
    shard = res[0]["n"] // 2
    by_dp = {}
    for r in res:
        assert len(r["seen"]) == shard and set(r["rows"].values()) == {shard}
        assert r["reported"] == [shard, shard]
        by_dp.setdefault(r["dp"], r["seen"])
        assert by_dp[r["dp"]] == r["seen"]  # both stages of one dp rank see the same samples
    assert not by_dp[0] & by_dp[1]


def test_dp_sharded_sampler_binds_samples_to_ranks():
    """AQ-SGD keying: over 3 epochs each dp rank's slice comes from one fixed shard, every epoch
    covers the shard once in a new order. Catches samples moving between ranks across epochs."""
    s = DpShardedEpochSampler(11, 4, seed=0, num_epochs=3, shards=2)  # shards of 5, one id unused
    per_rank = {0: [], 1: []}
    for _ in range(7):  # 7 x 2 = 14 of each rank's 15 samples: crosses epoch boundaries mid-batch
        ids = s.next_global()
        per_rank[0] += ids[:2].tolist()
        per_rank[1] += ids[2:].tolist()
    assert not set(per_rank[0]) & set(per_rank[1])
    for seq in per_rank.values():
        epochs = [seq[0:5], seq[5:10]]
        assert all(sorted(e) == sorted(epochs[0]) and len(set(e)) == 5 for e in epochs)
        assert epochs[0] != epochs[1]
        assert set(seq[10:]) <= set(epochs[0])
    assert s.distinct_samples_seen == 10
