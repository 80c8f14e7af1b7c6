"""What the runner needs of a target and of a sentinel, whichever server or command it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bench.workloads import CheckTarget


@dataclass(frozen=True)
class Counts:
    """What a target has seen so far."""

    checks: int  # http(s) requests, tcp accepted connections or exec appends
    connections: int | None  # connections accepted; None without a server (exec)


@dataclass(frozen=True)
class TlsStats:
    """TLS handshakes a target completed over a run, and how many resumed a session."""

    handshakes: int
    resumed: int
    versions: dict[str, int]  # handshakes by protocol version ("TLSv1.3": 1000)


class Target(Protocol):
    """The loopback target of the N measured workloads."""

    name: str  # "nginx", "builtin" or "file"

    def start(self) -> CheckTarget:
        """Start serving; returns what the workloads must check."""
        ...

    def counts(self) -> Counts:
        """Checks and connections seen so far."""
        ...

    def tls_stats(self) -> TlsStats | None:
        """TLS handshakes so far (None when the target speaks no TLS). Call it once the checks
        are over: nginx's are counted in a log it writes when it stops, and it is stopped."""
        ...

    def stop(self) -> None: ...


class Sentinel(Protocol):
    """The target of the sentinel workloads, which the bench can break."""

    def start(self) -> CheckTarget: ...

    def break_(self) -> None:
        """Make every check of the sentinels fail from now on; returns once that holds."""
        ...

    def stop(self) -> None: ...
