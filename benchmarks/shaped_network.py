"""Ranks in their own network namespaces on one bridge, each link shaped with tc.

    with ShapedNetwork(world_size=4, rate_mbit=1000) as net:
        net.measure_rate_gbit()              # a quick transfer between two ranks
        net.popen(rank, ["torchrun", ...])   # runs inside rank's namespace

Layout: a hub namespace holds a bridge; rank i's namespace holds eth0 (10.231.S.(i+1)/24),
one end of a veth pair whose other end sits on the bridge. With a rate, a tbf qdisc shapes both
directions of every rank's link (eth0 egress, and the hub end's egress toward the rank), so each
rank sends and receives at most `rate`. An optional delay needs the kernel's sch_netem. Nothing
touches the root namespace's interfaces; all traffic stays inside the namespaces created here,
which are deleted on exit, on an exception and on SIGTERM. Needs root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType, TracebackType

INTERFACE = "eth0"
_RECEIVER = r"""
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2]))); server.listen(1)
print("ready", flush=True)
conn, _ = server.accept(); total = int(sys.argv[3]); got = 0; began = None
while got < total:
    chunk = conn.recv(1 << 20)
    if not chunk: break
    if began is None: began = time.perf_counter()
    got += len(chunk)
print(got, time.perf_counter() - began, flush=True)
"""
_SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block = b"\0" * (1 << 20); left = int(sys.argv[3])
while left > 0:
    s.sendall(block[: min(left, len(block))]); left -= len(block)
s.close()
"""


class NetworkSetupError(RuntimeError):
    """The namespaces, bridge or qdiscs could not be created (the message says which)."""


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkSetupError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


class ShapedNetwork:
    def __init__(
        self, world_size: int, rate_mbit: float | None, delay_ms: float = 0.0, tag: str = ""
    ) -> None:
        if os.geteuid() != 0:
            raise PermissionError(
                "shaped networks need root (network namespaces and tc qdiscs); run as root, "
                "or benchmark unshaped loopback without --bandwidth"
            )
        if world_size < 2 or world_size > 200:
            raise ValueError(f"world_size={world_size}; valid: 2 to 200")
        if rate_mbit is not None and rate_mbit <= 0:
            raise ValueError(f"rate_mbit={rate_mbit}; valid: > 0, or None for unshaped")
        if delay_ms < 0:
            raise ValueError(f"delay_ms={delay_ms}; valid: >= 0")
        self.world_size = world_size
        self.rate_mbit = rate_mbit
        self.delay_ms = delay_ms
        tag = tag or str(os.getpid() % 100000)
        self.hub = f"gcbench{tag}hub"
        self.namespaces = [f"gcbench{tag}r{i}" for i in range(world_size)]
        subnet = os.getpid() % 250 + 1
        self.addresses = [f"10.231.{subnet}.{i + 1}" for i in range(world_size)]
        self._created: list[str] = []
        self._previous_sigterm: object = None

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> ShapedNetwork:
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        sys.exit(128 + signum)

    def close(self) -> None:
        """Deletes every namespace created (their veths, bridge and qdiscs go with them)."""
        for namespace in reversed(self._created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._created.clear()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)  # type: ignore[arg-type]
            self._previous_sigterm = None

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._created.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for rank, namespace in enumerate(self.namespaces):
            address = self.addresses[rank]
            self._add_namespace(namespace)
            port = f"r{rank}"
            _run("ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name",
                 INTERFACE, "netns", namespace)  # fmt: skip
            _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", INTERFACE)
            _run("ip", "-n", namespace, "link", "set", INTERFACE, "up")
            _run("ip", "-n", self.hub, "link", "set", port, "master", "br0")
            _run("ip", "-n", self.hub, "link", "set", port, "up")
            self._shape(namespace, INTERFACE)
            self._shape(self.hub, port)

    def _shape(self, namespace: str, device: str) -> None:
        parent = ["root"]
        if self.delay_ms > 0:
            try:
                _run("tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "handle",
                     "1:", "netem", "delay", f"{self.delay_ms}ms")  # fmt: skip
            except NetworkSetupError as error:
                raise NetworkSetupError(
                    f"--delay needs the kernel's sch_netem qdisc, which this machine lacks "
                    f"({error})"
                ) from None
            parent = ["parent", "1:"]
        if self.rate_mbit is None:
            return
        # About 1 ms of traffic per burst (at least 128 KiB, so a GSO super-packet fits).
        burst = max(128 * 1024, int(self.rate_mbit * 1e6 / 8 / 1000))
        _run("tc", "-n", namespace, "qdisc", "add", "dev", device, *parent, "tbf", "rate",
             f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "100ms")  # fmt: skip

    # -- use --------------------------------------------------------------------------------
    def command(self, rank: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[rank], *argv]

    def popen(self, rank: int, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.command(rank, argv), **kwargs)  # type: ignore[call-overload]

    def measure_rate_gbit(self, seconds: float = 0.5, port: int = 29399) -> float:
        """Sends about `seconds` worth of bytes from rank 0 to rank 1 over TCP; the rate the
        receiver saw, in Gbit/s (unshaped: 4 GB at most)."""
        rate = (self.rate_mbit or 32_000) * 1e6 / 8
        total = int(min(rate * seconds, 4e9))
        receiver = self.popen(
            1,
            [sys.executable, "-c", _RECEIVER, self.addresses[1], str(port), str(total)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            if receiver.stdout.readline().strip() != "ready":
                raise NetworkSetupError("rate check: the receiver did not start")
            sender = subprocess.run(
                self.command(
                    0, [sys.executable, "-c", _SENDER, self.addresses[1], str(port), str(total)]
                ),
                capture_output=True,
                text=True,
                timeout=120,
            )
            if sender.returncode != 0:
                raise NetworkSetupError(f"rate check: the sender failed: {sender.stderr.strip()}")
            got, elapsed = receiver.stdout.readline().split()
        finally:
            receiver.kill()
            receiver.wait()
        return int(got) * 8 / float(elapsed) / 1e9


def namespaces_left(prefix: str = "gcbench") -> list[str]:
    """Namespaces this module created that still exist (for tests of the teardown)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(prefix)]


if __name__ == "__main__":  # a quick manual check: python shaped_network.py 1000
    with ShapedNetwork(2, float(sys.argv[1]) if len(sys.argv) > 1 else None) as net:
        began = time.perf_counter()
        print(f"measured {net.measure_rate_gbit():.3f} Gbit/s", flush=True)
        print(f"({time.perf_counter() - began:.1f} s)")
