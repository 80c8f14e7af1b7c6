"""The connection budget's counts per listener and per peer (``budget.py``), without sockets:
who is a peer on TCP, and the places kept for root there. The attacks themselves are made on
the real daemon (tests/faults/test_api_peer_uid.py, test_api_lockout.py)."""

from __future__ import annotations

from healthd.api.budget import ConnectionBudget
from healthd.api.messages import Limits, Peer

ROOT = 0
DAEMON = 998


def tcp(host: str, uid: int | None = None) -> Peer:
    return Peer(unix=False, host=host, uid=uid, uid_source="sock_diag" if uid is not None else None)


def admitted(budget: ConnectionBudget, peer: Peer, n: int) -> int:
    """How many of ``n`` connections of ``peer`` are let in (none waits, so none gives way)."""
    return sum(budget.admit("tcp", peer, list) is None for _ in range(n))


def test_a_local_user_is_one_peer_from_any_loopback_address() -> None:
    budget = ConnectionBudget(Limits(max_connections=100, max_connections_per_address=4), {ROOT})
    got = [admitted(budget, tcp(f"127.0.0.{n}", uid=65534), 4) for n in range(1, 5)]
    assert got == [4, 0, 0, 0]
    refusal = budget.admit("tcp", tcp("127.0.0.9", uid=65534), list)
    assert refusal is not None
    assert "from uid 65534" in refusal.message
    # a client the kernel did not name is counted by its address, as before
    assert admitted(budget, tcp("127.0.0.1"), 5) == 4
    assert admitted(budget, tcp("127.0.0.2"), 5) == 4


def test_the_last_places_on_tcp_are_kept_for_root_and_the_daemons_uid() -> None:
    budget = ConnectionBudget(
        Limits(max_connections=16, max_connections_per_address=4), {ROOT, DAEMON}
    )
    others = [admitted(budget, tcp("127.0.0.1", uid=uid), 4) for uid in (1000, 1001, 1002, 1003)]
    assert others == [4, 4, 4, 0]  # 12: what is not kept
    assert admitted(budget, tcp("192.0.2.7"), 1) == 0  # a remote client is one of the others
    assert admitted(budget, tcp("127.0.0.1", uid=ROOT), 2) == 2
    assert admitted(budget, tcp("127.0.0.5", uid=DAEMON), 3) == 2  # the listener is full


def test_a_low_max_connections_with_the_default_per_client_keeps_a_quarter_for_root() -> None:
    """A config that set only max_connections (the per-client 64 above it) still works."""
    budget = ConnectionBudget(Limits(max_connections=8), {ROOT})
    assert admitted(budget, tcp("127.0.0.1", uid=1000), 8) == 6
    assert admitted(budget, tcp("127.0.0.1", uid=ROOT), 8) == 2
