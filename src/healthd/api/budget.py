"""How many connections the API holds, per listener and per peer, so that no one local user
can lock everyone else out.

- Each listener has its own budget: a flood of the TCP listener leaves the Unix socket alone.
- A peer is a uid where the kernel says it: on the Unix socket (SO_PEERCRED), and for a
  loopback client on TCP (sock_diag, see peer_uid.py), since every local user may connect
  from 127.0.0.1 or bind any of 127.0.0.0/8. Elsewhere (a remote client of a listener that
  needs the token, or a local one the kernel could not name) a peer is its source address.
- On the socket, the last ``socket_max_connections_per_uid`` places are kept for root and the
  daemon's own uid (the way in for ``healthd reload`` and the CLI as root), and every other
  uid may hold at most that many.
- On TCP, each peer may hold at most ``max_connections_per_address``, and the last as many
  places (a quarter of ``max_connections`` at most) are kept for root and the daemon's uid:
  their scrapes and CLI calls from 127.0.0.1 get in whatever other users hold.
- A newcomer that would go over a budget takes the place of the oldest connection that is
  only waiting (connected, or kept alive after its answers, or half-way through sending a
  request head), first of its own peer, else, when the listener is full, of the peer that
  holds the most, if it holds more than the newcomer's, else of its own peer again. A
  request being answered or a stream
  being sent is never cut; with nothing to take, the newcomer is refused with 503.

So connections held open and silent, the way the lock-out was made, give way to anyone who
asks something: a client sends its request as soon as it connects, and will not be the oldest
waiting one for long.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from healthd.api.messages import Limits, Peer

# (listener, uid), or ("tcp", address) when the uid is not known; ("unix", None) likewise
PeerKey = tuple[str, str | int | None]


class Waiting(Protocol):
    """A connection as the budget sees it."""

    local: str
    peer: Peer

    def waiting_since(self) -> float | None:
        """When it began to wait for its client (None: it is being answered)."""

    def give_way(self) -> None:
        """Close it, for a newcomer."""


def key_of(local: str, peer: Peer) -> PeerKey:
    if local == "unix" or peer.uid is not None:
        return (local, peer.uid)
    return (local, peer.host)


@dataclass
class Refusal:
    message: str


class ConnectionBudget:
    def __init__(self, limits: Limits, trusted_uids: Iterable[int]) -> None:
        self.limits = limits
        self.trusted_uids = frozenset(trusted_uids)
        self.per_listener: Counter[str] = Counter()
        self.per_peer: Counter[PeerKey] = Counter()

    def admit(
        self, local: str, peer: Peer, held: Callable[[], Iterable[Waiting]]
    ) -> Refusal | None:
        """Count a new connection in, making room if it must (see the module's text); or
        say why it cannot be. ``held``: the connections counted now."""
        key = key_of(local, peer)
        total, per_peer = self._caps(local, peer)
        if self.per_peer[key] >= per_peer and not self._take_place(held(), key):
            return Refusal(self._peer_message(local, peer))
        if (
            self.per_listener[local] >= total
            and not self._take_place_from_largest(held(), local, key)
            and not self._take_place(held(), key)
        ):
            return Refusal(f"too many connections to the API's {self._name(local)}")
        self.per_listener[local] += 1
        self.per_peer[key] += 1
        return None

    def release(self, local: str, peer: Peer) -> None:
        key = key_of(local, peer)
        self.per_listener[local] -= 1
        self.per_peer[key] -= 1
        if self.per_peer[key] <= 0:
            del self.per_peer[key]

    def _caps(self, local: str, peer: Peer) -> tuple[int, int]:
        """(the listener's total this peer may reach, the peer's own cap)."""
        limits = self.limits
        if local == "unix":
            total, per_peer = limits.socket_max_connections, limits.socket_max_connections_per_uid
            reserve = per_peer  # service.py makes sure others keep some
        else:
            total, per_peer = limits.max_connections, limits.max_connections_per_address
            # A config that set max_connections low (with the default per-peer 64) still loads
            reserve = min(per_peer, total // 4)
        if peer.uid in self.trusted_uids:
            return total, total
        return max(0, total - reserve), per_peer

    def _take_place(self, held: Iterable[Waiting], key: PeerKey) -> bool:
        return _give_way(c for c in held if key_of(c.local, c.peer) == key)

    def _take_place_from_largest(self, held: Iterable[Waiting], local: str, key: PeerKey) -> bool:
        mine = self.per_peer[key]
        largest = max(
            (k for k in self.per_peer if k[0] == local), key=self.per_peer.__getitem__, default=None
        )
        if largest is None or self.per_peer[largest] <= mine + 1:
            return False  # a peer may not push out one that holds no more than it would
        return _give_way(c for c in held if key_of(c.local, c.peer) == largest)

    def _peer_message(self, local: str, peer: Peer) -> str:
        where = self._name(local)
        if peer.uid in self.trusted_uids:
            return f"too many connections to the API's {where}"
        if peer.uid is None:
            return f"too many connections to the API from {peer.host or 'this client'}"
        return (
            f"too many connections to the API's {where} from uid {peer.uid} "
            "(the last places are kept for root)"
        )

    @staticmethod
    def _name(local: str) -> str:
        return "Unix socket" if local == "unix" else "TCP listener"


def _give_way(candidates: Iterable[Waiting]) -> bool:
    """Close the connection that has waited longest among ``candidates``; False if none waits."""
    oldest: tuple[float, Waiting] | None = None
    for conn in candidates:
        since = conn.waiting_since()
        if since is not None and (oldest is None or since < oldest[0]):
            oldest = (since, conn)
    if oldest is None:
        return False
    oldest[1].give_way()
    return True
