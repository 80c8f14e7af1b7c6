"""How many expensive reads each client may make: a token bucket per peer.

An expensive read (a whole /v1/status, /metrics, ...) costs the event loop that runs the checks
far more than any other request, even served from a kept answer (it is written out whole).
Each peer gets ``rate`` of them a second on average, in bursts of up to ``burst``.

A request over the budget waits for its turn, for up to ``max_wait``: a client that asks one
thing at a time is only slowed down to the rate, never refused. When its turn is further away
than that, it is refused (429, with Retry-After) after ``max_wait`` all the same: a client
that pipelines or ignores Retry-After cannot turn refusals into a fast loop of cheap answers,
since each costs its connection that long.

Who a peer is:

- a local client, its uid, the same on both listeners: on the Unix socket from SO_PEERCRED,
  on TCP from loopback from the kernel's sock_diag (peer_uid.py); neither can be forged, so a
  user flooding from 127.0.0.1 spends only its own budget, not Prometheus's (another uid);
- a loopback TCP client the kernel could not name (its socket already closed): every
  loopback address together, since any local user can bind any of 127.0.0.0/8
  (``curl --interface 127.0.0.2``), and one budget per address would give 16 million;
- on TCP from elsewhere (a listener that needs the token), its address.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from healthd.api.messages import Peer

RATE = 20.0  # expensive reads a second, per peer, on average
BURST = 40  # ... and at once
MAX_WAIT = 1.0  # seconds a request over the budget waits for its turn before it is refused
MAX_PEERS = 4096  # buckets kept; the least recently used is forgotten (it starts full again)


def peer_key(peer: Peer) -> str:
    """Whose budget a request spends (see the module's rules)."""
    if peer.uid is not None:
        return f"uid:{peer.uid}"
    if peer.unix:
        return "unix"
    try:
        address = ipaddress.ip_address(peer.host)
    except ValueError:
        return f"tcp:{peer.host}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return "loopback" if address.is_loopback else f"tcp:{address}"


@dataclass(slots=True)
class _Bucket:
    tokens: float  # may go below zero: turns handed out ahead, to requests waiting for them
    updated: float


@dataclass(frozen=True, slots=True)
class Turn:
    """When a request may be answered: after ``wait`` seconds; or, ``refused``, never (answer
    429 after ``wait`` seconds, and tell the client to come back in ``retry_after``)."""

    wait: float
    refused: bool = False
    retry_after: int = 0


class ReadBudget:
    def __init__(
        self,
        *,
        rate: float = RATE,
        burst: int = BURST,
        max_wait: float = MAX_WAIT,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_wait = max_wait
        self.max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.refused = 0  # since the start

    def turn(self, key: str) -> Turn:
        """Take a turn of ``key``'s budget, now or ahead; refused when too far ahead."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        wait = (1.0 - bucket.tokens) / self.rate if bucket.tokens < 1.0 else 0.0
        if wait > self.max_wait:
            self.refused += 1
            # Its turn would come after those handed out ahead; it is refused max_wait from now.
            retry = max(1, math.ceil(wait - self.max_wait))
            return Turn(self.max_wait, refused=True, retry_after=retry)
        bucket.tokens -= 1.0
        return Turn(wait)
