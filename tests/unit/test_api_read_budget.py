"""The API's budget of expensive reads per client, kept answers, and their exact encoding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthd.api import views
from healthd.api.answers import BUILD_SHARE, CachedAnswer
from healthd.api.messages import Peer, json_response
from healthd.api.read_budget import ReadBudget, peer_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- who a peer is --------------------------------------------------------------------------------


def test_every_loopback_address_is_one_peer_and_unix_users_are_apart() -> None:
    loopback = {
        peer_key(Peer(unix=False, host=h))
        for h in ("127.0.0.1", "127.0.0.2", "127.255.1.9", "::1", "::ffff:127.3.2.1")
    }
    assert loopback == {"loopback"}
    assert peer_key(Peer(unix=True, uid=65534)) == "uid:65534"
    assert peer_key(Peer(unix=True, uid=0)) == "uid:0"
    assert peer_key(Peer(unix=True)) == "unix"
    assert peer_key(Peer(unix=False, host="10.1.2.3")) == "tcp:10.1.2.3"
    assert peer_key(Peer(unix=False, host="::ffff:10.1.2.3")) == "tcp:10.1.2.3"
    assert peer_key(Peer(unix=False, host="")) == "tcp:"


def test_a_local_user_is_its_uid_on_tcp_and_on_the_socket_alike() -> None:
    """A loopback TCP client the kernel names (sock_diag) spends its uid's budget, whatever
    127.x address it comes from, and the same one as on the Unix socket."""
    by_tcp = {
        peer_key(Peer(unix=False, host=h, uid=65534, uid_source="sock_diag"))
        for h in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.3.2.1")
    }
    assert by_tcp == {peer_key(Peer(unix=True, uid=65534, uid_source="SO_PEERCRED"))}
    prometheus = Peer(unix=False, host="127.0.0.1", uid=998, uid_source="sock_diag")
    assert peer_key(prometheus) != "uid:65534"
    assert peer_key(prometheus) != peer_key(Peer(unix=False, host="127.0.0.1"))


# -- the budget -----------------------------------------------------------------------------------


def test_a_burst_goes_at_once_then_turns_come_at_the_rate() -> None:
    clock = Clock()
    budget = ReadBudget(rate=10, burst=5, max_wait=1.0, clock=clock)
    assert [budget.turn("a").wait for _ in range(5)] == [0.0] * 5
    waits = [budget.turn("a").wait for _ in range(10)]
    assert waits == pytest.approx([0.1 * (i + 1) for i in range(10)])
    refused = budget.turn("a")
    assert refused.refused
    assert refused.wait == 1.0  # answered 429 only after the longest wait
    assert refused.retry_after == 1
    assert budget.refused == 1
    assert budget.turn("b").wait == 0.0  # another peer has its own budget


def test_a_client_asking_one_thing_at_a_time_is_slowed_never_refused() -> None:
    clock = Clock()
    budget = ReadBudget(rate=10, burst=2, max_wait=1.0, clock=clock)
    for _ in range(200):
        turn = budget.turn("a")
        assert not turn.refused
        clock.now += turn.wait  # the next request comes once this one is answered
    assert budget.refused == 0
    assert clock.now - 100.0 == pytest.approx(19.8)  # 200 requests at 10 a second, 2 at once


def test_the_budget_refills_with_time_up_to_the_burst() -> None:
    clock = Clock()
    budget = ReadBudget(rate=10, burst=3, max_wait=0.0, clock=clock)
    assert [budget.turn("a").refused for _ in range(4)] == [False, False, False, True]
    clock.now += 60
    assert [budget.turn("a").refused for _ in range(4)] == [False, False, False, True]


def test_retry_after_counts_the_turns_handed_out_ahead() -> None:
    clock = Clock()
    budget = ReadBudget(rate=1, burst=1, max_wait=3.0, clock=clock)
    assert [budget.turn("a").wait for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    refused = budget.turn("a")
    assert refused.refused
    assert refused.retry_after == 1  # its turn is 4 s away; it is refused after 3 of them


def test_the_peer_table_is_bounded() -> None:
    clock = Clock()
    budget = ReadBudget(rate=1, burst=1, max_wait=0.0, max_peers=100, clock=clock)
    for n in range(10_000):
        budget.turn(f"tcp:10.0.{n // 256}.{n % 256}")
    assert len(budget._buckets) == 100


# -- kept answers ---------------------------------------------------------------------------------


async def test_an_answer_is_built_once_for_concurrent_requests_and_kept_while_fresh() -> None:
    clock = Clock()
    version = [0]
    started = asyncio.Event()
    release = asyncio.Event()

    async def build() -> bytes:
        started.set()
        await release.wait()
        return f"v{version[0]} at {clock.now:.1f}".encode()

    answer = CachedAnswer(build, lambda: version[0], fresh_for=1.0, clock=clock)
    waiting = [asyncio.create_task(answer.get()) for _ in range(20)]
    await started.wait()
    waiting[0].cancel()  # a client that goes away does not cancel the build for the others
    release.set()
    got = await asyncio.gather(*waiting[1:])
    assert set(got) == {b"v0 at 100.0"}
    assert answer.builds == 1
    clock.now += 0.9
    assert await answer.get() == b"v0 at 100.0"
    clock.now += 0.2  # older than fresh_for
    assert await answer.get() == b"v0 at 101.1"
    version[0] = 1  # a state changed: rebuilt at once
    assert await answer.get() == b"v1 at 101.1"
    assert answer.builds == 3


async def test_a_request_after_a_change_never_gets_a_build_begun_before_it() -> None:
    version = [0]
    release = asyncio.Event()
    started = asyncio.Event()

    async def build() -> bytes:
        seen = version[0]
        started.set()
        await release.wait()
        return f"v{seen}".encode()

    answer = CachedAnswer(build, lambda: version[0])
    early = asyncio.create_task(answer.get())
    await started.wait()
    version[0] = 1  # a workload turned unhealthy while the list was being read
    late = asyncio.create_task(answer.get())
    await asyncio.sleep(0)
    release.set()
    assert await early == b"v0"  # asked before the change: the build it joined is its answer
    assert await late == b"v1"  # asked after: built again
    assert answer.builds == 2


async def test_an_answer_slow_to_build_is_kept_longer() -> None:
    clock = Clock()

    async def build() -> bytes:
        clock.now += 0.5  # half a second of building
        return b"x"

    answer = CachedAnswer(build, lambda: 0, fresh_for=1.0, clock=clock)
    await answer.get()
    clock.now += BUILD_SHARE * 0.5 - 0.01
    await answer.get()
    assert answer.builds == 1
    clock.now += 0.02
    await answer.get()
    assert answer.builds == 2


async def test_a_failed_build_fails_its_waiters_and_is_tried_again() -> None:
    calls = [0]

    async def build() -> bytes:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("journal gone")
        return b"ok"

    answer = CachedAnswer(build, lambda: 0)
    with pytest.raises(RuntimeError, match="journal gone"):
        await answer.get()
    assert await answer.get() == b"ok"


# -- exact encoding -------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    entries=st.lists(st.dictionaries(st.text(), JSON_VALUES, max_size=4), max_size=250),
    tail=JSON_VALUES,
)
def test_encoding_in_slices_gives_the_bytes_of_encoding_it_whole(
    entries: list[dict[str, Any]], tail: Any
) -> None:
    names = [str(i) for i in range(len(entries))]
    seen: list[dict[str, Any]] = []
    listed = asyncio.run(views.encode_list(names, lambda n: entries[int(n)], seen))
    whole = json_response(200, {"list": entries, 'tail ü"': tail}).body
    tail_json = json.dumps(tail, ensure_ascii=False)
    assert views.encode_object([("list", listed), ('tail ü"', tail_json)]) == whole
    assert seen == entries


def test_entries_gone_while_a_list_is_built_are_left_out() -> None:
    seen: list[dict[str, Any]] = []
    listed = asyncio.run(
        views.encode_list(["a", "b", "c"], lambda n: None if n == "b" else {"n": n}, seen)
    )
    assert listed == '[{"n": "a"}, {"n": "c"}]'
    assert seen == [{"n": "a"}, {"n": "c"}]
