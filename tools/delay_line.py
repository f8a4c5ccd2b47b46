"""A user-space wire with one-way latency, for kernels without the netem qdisc.

tools/netsim.py starts this as a child process when a delay is asked for and `tc qdisc ...
netem` is unavailable. It creates one tap device inside each host namespace (entering each
in turn with setns(2), so the device is born there and needs no move), prints `ready`, then
moves Ethernet frames between the taps: each frame read from host i's tap is written to its
destination tap `delay` seconds later, in order. With two hosts it is a wire; with more it is
a learning switch (source MAC -> port, unknown and broadcast destinations flooded). The rate
limit stays in the kernel: tools/netsim.py puts a tbf qdisc on every tap, i.e. on each host's
egress, so a frame is shaped, then delayed, like a slow link with propagation delay.

    python tools/delay_line.py --namespaces mc-ab12-h0 mc-ab12-h1 --ifname mcab12h0 mcab12h1 \
        --delay 0.005

It exits (and the taps vanish with its file descriptors) on SIGTERM/SIGINT or when its stdin
reaches end of file, i.e. when the parent that holds the pipe dies.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
MAX_FRAME = 65536 + 64


def _setns(fd: int) -> None:
    """Move this thread into the network namespace behind fd (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_taps(namespaces: list[str], names: list[str]) -> list[int]:
    """One non-blocking tap file descriptor per namespace, the device created inside it."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fds = []
    try:
        for ns, name in zip(namespaces, names):
            nsfd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                _setns(nsfd)
                fd = os.open("/dev/net/tun", os.O_RDWR)
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
                os.set_blocking(fd, False)
                fds.append(fd)
            finally:
                os.close(nsfd)
                _setns(home)
    finally:
        os.close(home)
    return fds


class Switch:
    """Frames in, (port, frame) out: a wire for two ports, a learning switch for more."""

    def __init__(self, ports: int):
        """ports: how many taps; table: learned source MAC -> port."""
        self.ports, self.table = ports, {}

    def route(self, port: int, frame: bytes) -> list[int]:
        """The ports a frame that came in on `port` goes out on."""
        if self.ports == 2:
            return [1 - port]
        self.table[frame[6:12]] = port
        dst = self.table.get(frame[0:6])
        if dst is None or frame[0] & 1:   # unknown, broadcast or multicast: flood
            return [p for p in range(self.ports) if p != port]
        return [] if dst == port else [dst]


def forward(fds: list[int], delay: float, lifeline: int | None) -> None:
    """Move frames between taps with `delay` seconds of latency until stopped."""
    switch, queues = Switch(len(fds)), [collections.deque() for _ in fds]
    watch = fds + ([lifeline] if lifeline is not None else [])
    while True:
        now = time.monotonic()
        timeout = 0.5
        for port, q in enumerate(queues):
            while q and q[0][0] <= now:
                try:
                    os.write(fds[port], q.popleft()[1])
                except (BlockingIOError, OSError):   # a full or downed tap drops, as a wire would
                    pass
            if q:
                timeout = min(timeout, q[0][0] - now)
        ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
        now = time.monotonic()
        for fd in ready:
            if fd == lifeline:
                if not os.read(lifeline, 4096):
                    return
                continue
            port = fds.index(fd)
            for _ in range(256):   # drain, but let due frames go out in between
                try:
                    frame = os.read(fd, MAX_FRAME)
                except BlockingIOError:
                    break
                for dst in switch.route(port, frame):
                    queues[dst].append((now + delay, frame))


def main(argv: list[str] | None = None) -> int:
    """CLI: create the taps, say `ready`, forward until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", nargs="+", required=True, help="host namespaces, in port order")
    parser.add_argument("--ifname", nargs="+", required=True, help="tap name inside each namespace")
    parser.add_argument("--delay", type=float, required=True, help="one-way latency in seconds")
    args = parser.parse_args(argv)
    if len(args.namespaces) != len(args.ifname) or len(args.namespaces) < 2:
        parser.error("give one --ifname per namespace, at least two")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    fds = open_taps(args.namespaces, args.ifname)
    print("ready", flush=True)
    lifeline = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.fileno()
    forward(fds, args.delay, lifeline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
