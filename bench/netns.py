"""Two network namespaces joined by a rate-limited veth pair: a storage node and a client.

Everything is set up with pyroute2; processes enter a namespace through `ip netns exec`.
The addresses (10.199.0.0/24) exist only inside the namespaces this module creates, so no
packet leaves the machine. Byte counts come from the veth interfaces' own statistics.
Namespaces are named stordb-<pid>-srv/-cli; ones left behind by a process that no longer
exists are removed on the next start, and `Testbed.__exit__` removes its own even on error.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute, NetNS, netns

SERVER_IP = "10.199.0.1"
CLIENT_IP = "10.199.0.2"
PREFIX = "stordb-"
REPO = Path(__file__).resolve().parent.parent
_NAME = re.compile(rf"^{PREFIX}(\d+)-(srv|cli)$")


@dataclass(frozen=True)
class Counters:
    """rx/tx bytes of the server-side and client-side veth ends."""

    server_rx: int
    server_tx: int
    client_rx: int
    client_tx: int

    def __sub__(self, o: Counters) -> Counters:
        return Counters(self.server_rx - o.server_rx, self.server_tx - o.server_tx,
                        self.client_rx - o.client_rx, self.client_tx - o.client_tx)


def remove_stale() -> list[str]:
    """Remove namespaces of this harness whose creating process is gone."""
    removed = []
    for name in netns.listnetns():
        m = _NAME.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            netns.remove(name)
            removed.append(name)
    return removed


def rate_bits(rate: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)bit", rate.strip().lower())
    if not m:
        raise ValueError(f"rate {rate!r} is not like '100mbit' or '1gbit'")
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)])


class Testbed:
    """`with Testbed("1gbit") as tb:` gives a server and a client namespace and a shaped link."""

    def __init__(self, rate: str, *, latency: str = "50ms") -> None:
        self.rate = rate
        self.latency = latency
        tag = f"{PREFIX}{os.getpid()}"
        self.ns = {"server": f"{tag}-srv", "client": f"{tag}-cli"}
        self.ifname = {"server": f"sb{os.getpid()}s"[:15], "client": f"sb{os.getpid()}c"[:15]}
        self.ip = {"server": SERVER_IP, "client": CLIENT_IP}
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Testbed:
        remove_stale()
        try:
            self._create()
        except BaseException:
            self._destroy()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._destroy()

    def _create(self) -> None:
        for ns in self.ns.values():
            netns.create(ns)
            # No IPv6: its router solicitations and MLD reports would cross the link at
            # random moments and spoil the byte counts the tests and the bench compare.
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                                f"net.ipv6.conf.{key}.disable_ipv6=1"], check=True)
        with IPRoute() as ipr:
            ipr.link("add", ifname=self.ifname["server"], kind="veth",
                     peer=self.ifname["client"])
            for side in ("server", "client"):
                idx = ipr.link_lookup(ifname=self.ifname[side])[0]
                ipr.link("set", index=idx, net_ns_fd=self.ns[side])
        for side in ("server", "client"):
            with NetNS(self.ns[side]) as n:
                idx = n.link_lookup(ifname=self.ifname[side])[0]
                n.addr("add", index=idx, address=self.ip[side], prefixlen=24)
                n.link("set", index=idx, state="up")
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        self.set_rate(self.rate)

    def set_rate(self, rate: str) -> None:
        """Token bucket on each end's egress: both directions get `rate`."""
        bits = rate_bits(rate)
        # A bucket of about 1 ms of traffic (at least 64 KB so one GSO segment fits).
        burst = max(64 * 1024, bits // 8 // 1000)
        for side in ("server", "client"):
            with NetNS(self.ns[side]) as n:
                idx = n.link_lookup(ifname=self.ifname[side])[0]
                n.tc("replace", "tbf", idx, handle="1:", rate=rate, burst=burst,
                     latency=self.latency)
        self.rate = rate

    def counters(self) -> Counters:
        vals: dict[str, tuple[int, int]] = {}
        for side in ("server", "client"):
            with NetNS(self.ns[side]) as n:
                idx = n.link_lookup(ifname=self.ifname[side])[0]
                st = n.link("get", index=idx)[0].get("IFLA_STATS64")
                vals[side] = (st["rx_bytes"], st["tx_bytes"])
        return Counters(*vals["server"], *vals["client"])

    def argv(self, side: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def popen(self, side: str, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("cwd", REPO)  # `python -m bench...` / `stord.cli...` from this checkout
        p = subprocess.Popen(self.argv(side, argv), **kw)  # type: ignore[call-overload]
        self._procs.append(p)
        return p

    def run(self, side: str, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(side, argv), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def _destroy(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.ns.values():
            if ns in netns.listnetns():
                netns.remove(ns)  # takes its veth end (and so the pair) with it


def wait_port(tb: Testbed, side: str, host: str, port: int, timeout: float = 20) -> None:
    """Wait until something listens on host:port inside a namespace."""
    probe = ("import socket,sys\n"
             f"s=socket.create_connection(({host!r},{port}),timeout=1);s.close()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = tb.run(side, [_python(), "-c", probe], timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} in the {side} namespace")


def _python() -> str:
    import sys

    return sys.executable
