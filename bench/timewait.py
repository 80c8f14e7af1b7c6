"""TCP sockets in TIME-WAIT on the host, counted from ``/proc/net/tcp`` and ``/proc/net/tcp6``.

Whoever closes a TCP connection first keeps it in TIME-WAIT for 60 s (fixed in Linux): a
checker that closes first ties up one local port per connection to the same server address,
out of ``net.ipv4.ip_local_port_range``; the host holds at most ``net.ipv4.tcp_max_tw_buckets``
of them (more are destroyed at once, with a "TCP: time wait bucket table overflow" warning).

Counting reads the tables the kernel prints for netstat, rows of the form

    sl  local_address rem_address   st ...
    0: 0100007F:1F90 0100007F:A3B2 06 ...

with addresses as hex 32-bit words in the host's byte order, ports as hex, and state ``06``
for TIME-WAIT. That is one read and one pass for both sides, with no process started
(``ss -tan state time-wait | wc -l`` costs a fork and an exec a sample, and a run per side).
A socket of an IPv6 dual-stack listener or client talking IPv4 is in ``tcp6``, with the IPv4
address mapped (``::ffff:127.0.0.1``); both forms of the target's address are matched.

Most of a sample's cost is the kernel's: it walks its whole connection table (a few ms, even
with no socket to list) and formats some 150 bytes per socket, about 1.6 µs each on a small
VM; splitting them here adds a fifth. Some 30 ms at 15,000 sockets, 200 ms at 100,000: hence
once a second, less often when a sample is slow, and the bench reports the time. (``ss`` asks
through netlink ``sock_diag``, which filters by state in the kernel: the cheaper way at that
scale, if it is ever needed.)
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
SYSCTL_DIR = Path("/proc/sys/net/ipv4")

TIME_WAIT = b"06"


def proc_hex(address: str) -> bytes:
    """An IP address as ``/proc/net/tcp*`` prints it: each 32-bit word in host byte order."""
    packed = ipaddress.ip_address(address).packed
    words = (int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4))
    return b"".join(b"%08X" % word for word in words)


def endpoint_forms(host: str, port: int) -> frozenset[bytes]:
    """``host:port`` as printed: IPv4, and IPv4-mapped IPv6 (in ``tcp6``) for an IPv4 host."""
    forms = {proc_hex(host)}
    address = ipaddress.ip_address(host)
    if address.version == 4:
        forms.add(proc_hex(f"::ffff:{address}"))
    return frozenset(b"%s:%04X" % (form, port) for form in forms)


@dataclass(frozen=True)
class TimeWaitCount:
    """TIME-WAIT sockets at one moment."""

    host: int  # all of them, in the bench's network namespace (healthd's too)
    client: int  # remote end is the target's address: the checking side's sockets
    server: int  # local end is the target's address: the target's own sockets


def count_time_wait(host: str, port: int, tables: Sequence[Path] = PROC_TABLES) -> TimeWaitCount:
    """TIME-WAIT sockets now, split by which end of the connection was ``host:port``."""
    ours = endpoint_forms(host, port)
    total = client = server = 0
    for table in tables:
        try:
            data = table.read_bytes()
        except FileNotFoundError:  # no IPv6 in this kernel: no tcp6
            continue
        for line in data.splitlines()[1:]:  # under the header
            # "sl:", local, remote, state; fields split on blanks, as "sl" widens past 9999
            fields = line.split(None, 4)
            if len(fields) < 4 or fields[3] != TIME_WAIT:
                continue
            total += 1
            if fields[2] in ours:
                client += 1
            elif fields[1] in ours:
                server += 1
    return TimeWaitCount(total, client, server)


@dataclass(frozen=True)
class TimeWaitSummary:
    """A sampler's figures over a window."""

    peak: TimeWaitCount  # each figure's own highest, not necessarily from the same sample
    end: TimeWaitCount  # the last sample, at the end of the window
    samples: int
    sample_ms: float  # mean time one sample took the bench


class TimeWaitSampler:
    """Samples ``count_time_wait`` at most once per ``period``; keeps each figure's peak.

    A sample that took long spaces the next ones out, so that sampling takes at most
    ``max_share`` of a core: the bench runs on the cores it measures healthd on, and a host
    holding 100,000 sockets makes a sample cost some 200 ms.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        period: float = 1.0,
        max_share: float = 0.05,
        tables: Sequence[Path] = PROC_TABLES,
    ) -> None:
        self.host = host
        self.port = port
        self.period = period
        self.max_share = max_share
        self.tables = tables
        self.samples = 0
        self.read_seconds = 0.0  # spent reading and counting: the sampling's own cost
        self.last: TimeWaitCount | None = None
        self.peak: TimeWaitCount | None = None
        self._at = -float("inf")  # when the last sample ended
        self._cost = 0.0  # what it took

    def sample(self) -> TimeWaitCount:
        started = time.monotonic()
        now = count_time_wait(self.host, self.port, self.tables)
        self._at = time.monotonic()
        self._cost = self._at - started
        self.read_seconds += self._cost
        self.samples += 1
        self.last = now
        peak = self.peak
        self.peak = (
            now
            if peak is None
            else TimeWaitCount(
                max(peak.host, now.host), max(peak.client, now.client), max(peak.server, now.server)
            )
        )
        return now

    def maybe_sample(self) -> None:
        """A sample, if the last one is ``period`` old or more (more after a slow one)."""
        spacing = max(self.period, self._cost / self.max_share)
        if time.monotonic() - self._at >= spacing:
            self.sample()

    @property
    def read_ms(self) -> float | None:
        """Mean time one sample took, in milliseconds."""
        return 1000 * self.read_seconds / self.samples if self.samples else None

    def summary(self) -> TimeWaitSummary | None:
        if self.peak is None or self.last is None or self.read_ms is None:
            return None
        return TimeWaitSummary(self.peak, self.last, self.samples, self.read_ms)


@dataclass(frozen=True)
class HostTcpLimits:
    """The sysctls TIME-WAIT figures are to be compared with; None where unreadable."""

    local_port_range: tuple[int, int] | None  # net.ipv4.ip_local_port_range
    max_tw_buckets: int | None  # net.ipv4.tcp_max_tw_buckets
    tw_reuse: int | None  # net.ipv4.tcp_tw_reuse: 1 lets connect() take a TIME-WAIT port

    @property
    def local_ports(self) -> int | None:
        """How many local ports connections to one server address can use."""
        if self.local_port_range is None:
            return None
        low, high = self.local_port_range
        return high - low + 1

    def describe(self) -> str:
        ports = "?" if self.local_ports is None else str(self.local_ports)
        if self.local_port_range is not None:
            ports += f" ({self.local_port_range[0]}-{self.local_port_range[1]})"
        buckets = "?" if self.max_tw_buckets is None else str(self.max_tw_buckets)
        reuse = "?" if self.tw_reuse is None else str(self.tw_reuse)
        return f"local ports {ports}, tcp_max_tw_buckets {buckets}, tcp_tw_reuse {reuse}"


def _sysctl_ints(path: Path) -> list[int] | None:
    try:
        return [int(word) for word in path.read_text().split()]
    except (OSError, ValueError):
        return None


def host_tcp_limits(sysctl_dir: Path = SYSCTL_DIR) -> HostTcpLimits:
    """The host's (network namespace's) port range, TIME-WAIT bucket limit and tw_reuse."""
    ports = _sysctl_ints(sysctl_dir / "ip_local_port_range")
    buckets = _sysctl_ints(sysctl_dir / "tcp_max_tw_buckets")
    reuse = _sysctl_ints(sysctl_dir / "tcp_tw_reuse")
    return HostTcpLimits(
        local_port_range=(ports[0], ports[1]) if ports and len(ports) == 2 else None,
        max_tw_buckets=buckets[0] if buckets and len(buckets) == 1 else None,
        tw_reuse=reuse[0] if reuse and len(reuse) == 1 else None,
    )
