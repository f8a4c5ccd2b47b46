"""Simulate a multi-node cluster on one machine: network namespaces, slow links, real torchrun.

As root, N network namespaces `mc-<id>-h<i>` act as hosts with addresses 10.77.0.(i+1)/24. Two
hosts are joined by one veth pair; more by veth pairs to a bridge in one extra namespace
`mc-<id>-sw`. Every host's egress is limited (so both directions of every path are):

- rate and delay: `netem rate R delay D` where the kernel has netem; otherwise a tbf qdisc
  for the rate and tools/delay_line.py for the delay (a user-space wire between tap devices);
- rate only: tbf;  --unthrottled: no qdisc at all.

One real torchrun node runs per host (`ip netns exec HOST python -m torch.distributed.run
--nnodes N --node_rank i --master_addr 10.77.0.1 ...`, GLOO_SOCKET_IFNAME set to the host's
interface); each node's output goes to OUT_DIR/node<i>.log, and the bytes that crossed each
host's interface (sysfs counters read inside its namespace before and after) to
OUT_DIR/summary.json. Whatever was created is removed at the end, on failure and on
SIGINT/SIGTERM; `--cleanup` removes leftovers of a killed run by run-id prefix.

    sudo python tools/netsim.py --hosts 2 --rate 50mbit --delay 5ms --out-dir runs/netsim -- \
        --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --vocab-size 512 \
        --micro-batch-size 4 --global-batch-size 16 --train-iters 30 --mock-data \
        --pipeline-model-parallel-size 2 --pp-compression-method clapping-fu
    sudo python tools/netsim.py --cleanup            # every mc-* namespace this tool left

Python: `run_cluster(hosts, train_args, rate="50mbit", delay="5ms", out_dir=...) -> dict`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "pretrain_gpt", "pretrain_gpt.py")
DELAY_LINE = os.path.join(REPO, "tools", "delay_line.py")
PREFIX, SUBNET = "mc-", "10.77.0"
UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
COUNTERS = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")


def parse_rate(text: str) -> float:
    """'50mbit' -> 5e7 bits/s (tc's units: bit, kbit, mbit, gbit; bps... are bytes/s)."""
    m = re.fullmatch(r"([0-9.]+)\s*([a-z]*)", text.strip().lower())
    if not m or m.group(2) not in UNITS:
        raise ValueError(f"--rate {text!r}: expected a number and one of {', '.join(UNITS)}, e.g. 50mbit")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_delay(text: str) -> float:
    """'5ms' -> 0.005 s (units: us, ms, s; a bare number is milliseconds)."""
    m = re.fullmatch(r"([0-9.]+)\s*(us|ms|s|)", text.strip().lower())
    if not m:
        raise ValueError(f"--delay {text!r}: expected e.g. 5ms")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "": 1e-3}[m.group(2)]


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (inside namespace ns if given); raise with its stderr when check fails."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    out = subprocess.run(full, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"netsim: `{' '.join(full)}` failed: {out.stderr.strip()}")
    return out


def check_privileges(run_id: str) -> bool:
    """Refuse clearly without root / CAP_NET_ADMIN; return whether the kernel has netem."""
    with open("/proc/self/status") as f:
        cap = int(next(line.split()[1] for line in f if line.startswith("CapEff")), 16)
    if os.geteuid() != 0 and not cap & (1 << 12):
        raise PermissionError("netsim needs root (or CAP_NET_ADMIN) to create network namespaces; "
                              "run it with sudo")
    probe = f"{PREFIX}{run_id}-probe"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        raise PermissionError(f"netsim: `ip netns add` failed ({out.stderr.strip()}); it needs root "
                              "with CAP_NET_ADMIN and CAP_SYS_ADMIN (e.g. a privileged container)")
    try:
        sh("ip", "link", "set", "lo", "up", ns=probe)
        return sh("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                  ns=probe, check=False).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class Cluster:
    """The namespaces, links and qdiscs of one run; destroy() removes all of them."""

    def __init__(self, hosts: int, run_id: str, rate: float | None, delay: float, mtu: int, netem: bool):
        if not 2 <= hosts <= 250:
            raise ValueError("--hosts must be between 2 and 250")
        if not re.fullmatch(r"[0-9a-z]{1,8}", run_id):
            raise ValueError(f"--run-id {run_id!r}: 1-8 lowercase letters or digits (interface names are short)")
        self.hosts, self.run_id, self.rate, self.delay, self.mtu = hosts, run_id, rate, delay, mtu
        self.ns = [f"{PREFIX}{run_id}-h{i}" for i in range(hosts)]
        self.switch_ns = f"{PREFIX}{run_id}-sw"
        self.ifname = [f"mc{run_id}h{i}" for i in range(hosts)]
        self.addr = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.tap = delay > 0 and not netem
        qdisc = "netem" if delay > 0 and netem else "tbf" if rate else "none"
        self.kind = ("tap+delay-line" if self.tap else "veth" + ("+bridge" if hosts > 2 else "")) + "/" + qdisc
        self.delay_line: subprocess.Popen | None = None

    @property
    def needs_switch(self) -> bool:
        """A bridge namespace joins more than two hosts (the delay line is its own switch)."""
        return self.hosts > 2 and not self.tap

    def create(self) -> None:
        """Namespaces (loopback up, no IPv6 chatter), links, addresses, qdiscs."""
        for ns in self.ns + ([self.switch_ns] if self.needs_switch else []):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; "
               "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6", ns=ns, check=False)
        if self.tap:
            self._tap_links()
        else:
            self._veth_links()
        for i, ns in enumerate(self.ns):
            sh("ip", "addr", "add", f"{self.addr[i]}/24", "dev", self.ifname[i], ns=ns)
            sh("ip", "link", "set", self.ifname[i], "mtu", str(self.mtu), "up", ns=ns)
            self._shape(i)

    def _veth_links(self) -> None:
        """One veth pair for two hosts; else host veths into a bridge in the switch namespace."""
        if self.hosts == 2:
            sh("ip", "link", "add", self.ifname[0], "netns", self.ns[0], "type", "veth",
               "peer", "name", self.ifname[1], "netns", self.ns[1])
            return
        sw = self.switch_ns
        sh("ip", "link", "add", "br0", "type", "bridge", ns=sw)
        sh("ip", "link", "set", "br0", "up", ns=sw)
        for i, ns in enumerate(self.ns):
            sh("ip", "link", "add", self.ifname[i], "netns", ns, "type", "veth",
               "peer", "name", f"p{i}", "netns", sw)
            sh("ip", "link", "set", f"p{i}", "mtu", str(self.mtu), "master", "br0", "up", ns=sw)

    def _tap_links(self) -> None:
        """Start tools/delay_line.py: it creates the hosts' taps and carries frames between them."""
        cmd = [sys.executable, DELAY_LINE, "--namespaces", *self.ns, "--ifname", *self.ifname,
               "--delay", repr(self.delay)]
        self.delay_line = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, start_new_session=True)
        ready, _, _ = select.select([self.delay_line.stdout], [], [], 30)
        if not ready or self.delay_line.stdout.readline().strip() != "ready":
            self.delay_line.kill()
            raise RuntimeError(f"netsim: the delay line did not start: {self.delay_line.stderr.read().strip()}")

    def _shape(self, i: int) -> None:
        """Limit host i's egress: netem (rate + delay), or tbf (rate; the delay line delays)."""
        dev, ns = self.ifname[i], self.ns[i]
        if self.delay > 0 and not self.tap:
            extra = ["rate", f"{int(self.rate)}bit"] if self.rate else []
            sh("tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{self.delay * 1e6:.0f}us",
               *extra, "limit", "100000", ns=ns)
        elif self.rate:
            burst = max(2 * (self.mtu + 64), int(self.rate / 8 * 0.002))
            sh("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{int(self.rate)}bit",
               "burst", str(burst), "latency", "200ms", ns=ns)

    def counters(self) -> list[dict]:
        """Each host interface's sysfs counters, read inside its namespace."""
        out = []
        for ns, dev in zip(self.ns, self.ifname):
            files = " ".join(f"/sys/class/net/{dev}/statistics/{c}" for c in COUNTERS)
            values = sh("sh", "-c", f"cat {files}", ns=ns).stdout.split()
            out.append(dict(zip(COUNTERS, map(int, values))))
        return out

    def delay_line_cpu_s(self) -> float | None:
        """CPU seconds the delay line has used so far (None without one)."""
        if self.delay_line is None or self.delay_line.poll() is not None:
            return None
        with open(f"/proc/{self.delay_line.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def destroy(self) -> None:
        """Stop the delay line, then remove everything named after this run."""
        if self.delay_line is not None and self.delay_line.poll() is None:
            _kill_group(self.delay_line)
        cleanup(f"{PREFIX}{self.run_id}-")


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM our child's process group, SIGKILL after grace seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Kill the processes inside, and delete, every namespace whose name starts with prefix
    (this tool's `mc-<id>-...`); links die with their namespace. Returns the names removed."""
    names = [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()]
    names = [n for n in names if n.startswith(prefix)]
    for ns in names:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline and sh("ip", "netns", "pids", ns, check=False).stdout.strip():
                time.sleep(0.1)
        sh("ip", "netns", "del", ns, check=False)
    run_id = prefix[len(PREFIX):].rstrip("-")   # root-namespace links (none unless interrupted)
    pattern = re.compile(rf"mc{re.escape(run_id)}[0-9a-z]*[hs][0-9]+" if run_id else r"mc[0-9a-z]+[hs][0-9]+")
    for line in sh("ip", "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if pattern.fullmatch(name):
            sh("ip", "link", "del", name, check=False)
    return names


@contextlib.contextmanager
def _signals_raise():
    """SIGINT/SIGTERM raise KeyboardInterrupt once (so finally blocks clean up), then are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(sig, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt(f"netsim: signal {sig}, cleaning up")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def launch(c: Cluster, train_args: list[str], nproc: int, port: int, out_dir: str, script: str,
           env: dict | None) -> list[subprocess.Popen]:
    """One torchrun node per host namespace, each its own process group, output to node<i>.log."""
    procs = []
    # The simulated hosts share this machine's cores: split them, as torchrun does per node.
    threads = str(max(1, (os.cpu_count() or 1) // (c.hosts * nproc)))
    for i, ns in enumerate(c.ns):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run",
               "--nnodes", str(c.hosts), "--node_rank", str(i), "--nproc_per_node", str(nproc),
               "--master_addr", c.addr[0], "--master_port", str(port), script, *train_args]
        node_env = {"OMP_NUM_THREADS": threads, **os.environ, **(env or {}), "GLOO_SOCKET_IFNAME": c.ifname[i]}
        with open(os.path.join(out_dir, f"node{i}.log"), "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=node_env,
                                          cwd=REPO, start_new_session=True))
    return procs


def wait_nodes(procs: list[subprocess.Popen], timeout: float, grace: float = 20.0) -> bool:
    """Wait for every node; after the first failure give the rest `grace` s. True if timed out."""
    deadline, failed_at = time.monotonic() + timeout, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = now
        if now > deadline or (failed_at is not None and now - failed_at > grace):
            for p in procs:
                if p.poll() is None:
                    _kill_group(p)
            return now > deadline
        time.sleep(0.1)
    return False


def run_cluster(hosts: int, train_args: list[str], rate: str | None = None, delay: str | None = None,
                nproc_per_host: int = 1, out_dir: str = "runs/netsim", *, mtu: int = 9000,
                timeout: float = 1800.0, port: int = 29500, run_id: str | None = None,
                script: str = SCRIPT, env: dict | None = None) -> dict:
    """Run one training across `hosts` simulated hosts; everything created is removed on return.

    rate: tc rate ('50mbit') or None for unthrottled; delay: one-way latency ('5ms') or None.
    Returns exit_codes, timed_out, wall_s, logs (text per node), log_files, links (per host:
    bytes/packets its interface sent and received during the run), kind, delay_line_cpu_s;
    the same, less the log text, is written to out_dir/summary.json.
    """
    run_id = run_id or secrets.token_hex(3)
    rate_bits, delay_s = (parse_rate(rate) if rate else None), (parse_delay(delay) if delay else 0.0)
    procs: list[subprocess.Popen] = []
    with _signals_raise():
        netem = check_privileges(run_id)
        cluster = Cluster(hosts, run_id, rate_bits, delay_s, mtu, netem)
        os.makedirs(out_dir, exist_ok=True)
        try:
            cluster.create()
            before, start = cluster.counters(), time.monotonic()
            procs = launch(cluster, train_args, nproc_per_host, port, out_dir, script, env)
            timed_out = wait_nodes(procs, timeout)
            wall, after = time.monotonic() - start, cluster.counters()
            cpu = cluster.delay_line_cpu_s()
        finally:
            for p in procs:
                if p.poll() is None:
                    _kill_group(p)
            cluster.destroy()
    links = [{"host": i, "namespace": cluster.ns[i], "ifname": cluster.ifname[i], "addr": cluster.addr[i],
              **{k: after[i][k] - before[i][k] for k in COUNTERS}} for i in range(hosts)]
    files = [os.path.join(out_dir, f"node{i}.log") for i in range(hosts)]
    summary = {"run_id": run_id, "hosts": hosts, "nproc_per_host": nproc_per_host, "rate": rate,
               "rate_bits": rate_bits, "delay_s": delay_s, "mtu": mtu, "kind": cluster.kind,
               "exit_codes": [p.returncode for p in procs], "timed_out": timed_out, "wall_s": wall,
               "delay_line_cpu_s": cpu, "links": links, "log_files": files, "train_args": train_args}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    logs = []
    for path in files:
        with open(path, errors="replace") as f:
            logs.append(f.read())
    return {**summary, "logs": logs}


def main(argv: list[str] | None = None) -> int:
    """CLI: netsim.py [options] -- TRAINING FLAGS, or --cleanup; exit 1 if a node failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="netsim.py [options] -- TRAINING FLAGS")
    parser.add_argument("--hosts", type=int, default=2, help="simulated hosts (one torchrun node each)")
    parser.add_argument("--nproc-per-host", type=int, default=1, help="torchrun --nproc_per_node")
    parser.add_argument("--rate", default=None, help="link rate, tc units: 10mbit, 1gbit")
    parser.add_argument("--delay", default=None, help="one-way latency per link: 5ms")
    parser.add_argument("--unthrottled", action="store_true", help="no rate or delay limit")
    parser.add_argument("--mtu", type=int, default=9000, help="interface MTU (jumbo frames by default)")
    parser.add_argument("--out-dir", default="runs/netsim", help="node<i>.log and summary.json go here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the nodes are killed")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--run-id", default=None, help="names: mc-<id>-h<i> (default: random)")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove leftovers of runs (all mc-* namespaces, or mc-<run-id>-*) and exit")
    args = parser.parse_args(own)
    if args.cleanup:
        prefix = f"{PREFIX}{args.run_id}-" if args.run_id else PREFIX
        print("netsim: removed", cleanup(prefix) or "nothing")
        return 0
    if args.unthrottled == bool(args.rate or args.delay):
        parser.error("give --rate (and optionally --delay), or --unthrottled")
    if not train_args:
        parser.error("no training flags: put them after `--`")
    try:
        res = run_cluster(args.hosts, train_args, None if args.unthrottled else args.rate,
                          None if args.unthrottled else args.delay, args.nproc_per_host, args.out_dir,
                          mtu=args.mtu, timeout=args.timeout, port=args.master_port, run_id=args.run_id)
    except KeyboardInterrupt as e:
        print(f"{e}; everything it created is removed", file=sys.stderr)
        return 130
    except PermissionError as e:
        print(e, file=sys.stderr)
        return 2
    print("\n".join(res["logs"][-1].splitlines()[-12:]))
    print(f"netsim: {res['hosts']} hosts, {res['kind']}, exit codes {res['exit_codes']}, {res['wall_s']:.1f} s")
    for link in res["links"]:
        print(f"  host {link['host']} {link['addr']}: sent {link['tx_bytes']:,} B, received {link['rx_bytes']:,} B")
    print(f"netsim: logs and summary.json in {args.out_dir}")
    return 0 if all(code == 0 for code in res["exit_codes"]) and not res["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
