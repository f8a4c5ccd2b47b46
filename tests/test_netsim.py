"""tools/netsim.py: a two-host run over a slow simulated link completes and leaves nothing
behind, also when training fails; skipped without root (namespaces need CAP_NET_ADMIN)."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from tools import netsim

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="netsim needs root (network namespaces, tc)")

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
        "--max-position-embeddings", "32", "--vocab-size", "128", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--train-iters", "4", "--mock-data", "--log-interval", "1",
        "--eval-interval", "4", "--eval-iters", "1", "--pipeline-model-parallel-size", "2",
        "--untie-embeddings-and-output-weights", "--pp-compression-method", "clapping-fu",
        "--pp-fwd-codec", "topk:0.1", "--pp-bwd-codec", "quant:8", "--lazy-sampling-prob", "0.5"]


def leftovers(run_id: str) -> list[str]:
    """Namespaces and root-namespace links still named after run_id."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return ([n for n in names if n.startswith(f"mc-{run_id}-")]
            + re.findall(rf"\d+: (mc{run_id}\w*)", links))


@needs_root
def test_two_hosts_slow_link_and_nothing_left(tmp_path):
    res = netsim.run_cluster(2, TINY, rate="100mbit", delay="1ms", out_dir=str(tmp_path),
                             run_id="t0a1", timeout=300)
    assert res["exit_codes"] == [0, 0], res["logs"][-1][-3000:]
    assert not res["timed_out"]
    assert len(re.findall(r"iteration +\d+/ +4 \|", res["logs"][1])) == 4
    sent = sum(float(x) for x in re.findall(r"pp bytes sent: ([0-9.E+]+)", res["logs"][1]))
    wire = sum(link["tx_bytes"] for link in res["links"])
    assert sent > 0 and wire > sent   # the wire also carries headers, evaluation and collectives
    assert res["links"][0]["tx_bytes"] == res["links"][1]["rx_bytes"]
    assert os.path.exists(tmp_path / "summary.json") and os.path.exists(tmp_path / "node1.log")
    assert leftovers("t0a1") == []


@needs_root
def test_failed_training_leaves_nothing(tmp_path):
    res = netsim.run_cluster(2, TINY + ["--no-such-flag"], rate="50mbit", out_dir=str(tmp_path),
                             run_id="t0b2", timeout=120)
    assert all(code not in (0, None) for code in res["exit_codes"])
    assert "--no-such-flag" in res["logs"][0]
    assert leftovers("t0b2") == []


@needs_root
def test_cleanup_removes_leftovers_by_prefix():
    subprocess.run(["ip", "netns", "add", "mc-t0c3-h0"], check=True)
    subprocess.run(["ip", "link", "add", "mct0c3h0", "type", "veth", "peer", "name", "mct0c3h1"], check=True)
    assert netsim.cleanup("mc-t0c3-") == ["mc-t0c3-h0"]
    assert leftovers("t0c3") == []


def test_parse_units():
    assert netsim.parse_rate("50mbit") == 50e6 and netsim.parse_rate("1gbit") == 1e9
    assert netsim.parse_delay("5ms") == pytest.approx(0.005)
    with pytest.raises(ValueError, match="--rate"):
        netsim.parse_rate("fast")
