"""HttpProbe with ``keep_alive: true`` keeps its connection between checks, and recovers when
the server drops it; by default every check has a connection of its own.

Each test runs an asyncio HTTP server of its own on loopback that counts the connections it
accepts and the requests it reads, and answers each connection as the test scripts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from healthd.checks.http import MAX_BODY_BYTES, HttpProbe
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@dataclass
class Conn:
    """One accepted connection, numbered from 1 in the order accepted."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: Server

    async def request(self) -> bytes:
        """The next request head on this connection (IncompleteReadError at EOF)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.server.requests.append((self.number, head))
        return head

    async def answer(self, raw: bytes = OK) -> None:
        self.writer.write(raw)
        await self.writer.drain()


Conversation = Callable[[Conn], Awaitable[None]]


@dataclass
class Server:
    port: int = 0
    accepts: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, head)
    closed: list[int] = field(default_factory=list)  # connections that reached their end

    @property
    def connections_used(self) -> list[int]:
        return [number for number, _ in self.requests]


@contextlib.asynccontextmanager
async def http_server(
    conversation: Conversation, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Server]:
    """Serve ``conversation`` per connection; the connection is closed when it returns."""
    info = Server()
    tasks: set[asyncio.Task[object]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.accepts += 1
        conn = Conn(info.accepts, reader, writer, info)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await conversation(conn)
        finally:
            info.closed.append(conn.number)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def keep_answering(conn: Conn) -> None:
    while True:
        await conn.request()
        await conn.answer()


def http_cfg(
    port: int, *, interval: float = 1.0, timeout: float = 5.0, keep_alive: bool | None = True
) -> WorkloadConfig:
    cfg = WorkloadConfig(
        workload="w",
        type="http",
        port=port,
        interval=interval,
        timeout=timeout,
        keep_alive=keep_alive,
    )
    return cfg.with_defaults()


async def check(probe: HttpProbe, address: str = "127.0.0.1") -> CheckResult:
    """One check of ``probe`` through its callback."""
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe.start(address, result.set_result)
    async with asyncio.timeout(probe.cfg.timeout + 5):  # the probe's deadline comes first
        return await result


async def until(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up after {timeout}s waiting for {what}")


def closed_count(srv: Server, n: int) -> Callable[[], bool]:
    return lambda: len(srv.closed) == n


# -- the default: a connection per check ----------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [None, False])
async def test_by_default_each_check_opens_a_connection_and_asks_to_close_it(
    keep_alive: bool | None,
) -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port, keep_alive=keep_alive))
        try:
            for n in range(1, 4):
                result = await check(probe)
                assert result.ok, result.error
                # closed by the probe once the answer is in, not at the next check
                await until(f"connection {n} to end", closed_count(srv, n))
        finally:
            probe.close()
    assert srv.accepts == 3
    assert srv.connections_used == [1, 2, 3]
    for _, head in srv.requests:
        assert b"\r\nConnection: close\r\n" in head


# -- reuse (keep_alive: true) ----------------------------------------------------------------------


async def test_checks_reuse_one_connection() -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            for _ in range(5):
                result = await check(probe)
                assert result.ok, result.error
                await asyncio.sleep(0.01)
        finally:
            probe.close()
    assert srv.accepts == 1
    assert len(srv.requests) == 5
    assert all(b"connection: close" not in head.lower() for _, head in srv.requests)


async def test_close_releases_the_kept_connection() -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        result = await check(probe)
        assert result.ok, result.error
        assert srv.closed == []
        probe.close()
        await until("the server to see the connection closed", lambda: srv.closed == [1])


async def test_server_closing_idle_connections_between_checks() -> None:
    async def answer_once_then_close_when_idle(conn: Conn) -> None:
        await conn.request()
        await conn.answer()  # keep-alive by HTTP/1.1 default...
        await asyncio.sleep(0.05)  # ...but the idle timeout is short

    async with http_server(answer_once_then_close_when_idle) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            for i in range(4):
                result = await check(probe)
                assert result.ok, f"check {i}: {result.error}"
                await until(f"connection {i + 1} to close", closed_count(srv, i + 1))
                await asyncio.sleep(0.05)  # our side has seen the close too
        finally:
            probe.close()
    assert srv.accepts == 4
    assert srv.connections_used == [1, 2, 3, 4]


async def test_kept_connection_closed_before_an_answer_is_retried_once() -> None:
    async def first_then_read_and_close(conn: Conn) -> None:
        if conn.number == 1:
            await conn.request()
            await conn.answer()
            await conn.request()  # read the second request, then close without answering
            return
        await keep_answering(conn)

    async with http_server(first_then_read_and_close) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            first = await check(probe)
            assert first.ok, first.error
            second = await check(probe)
            assert second.ok, second.error  # the close raced the request: not a failure
            third = await check(probe)
            assert third.ok, third.error
        finally:
            probe.close()
    assert srv.accepts == 2
    assert srv.connections_used == [1, 1, 2, 2]


async def test_retry_is_only_once() -> None:
    async def read_and_close(conn: Conn) -> None:
        await conn.request()
        if conn.number == 1:
            await conn.answer()
            await conn.request()

    async with http_server(read_and_close) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            assert (await check(probe)).ok
            result = await check(probe)  # reused conn closes, and so does the fresh one
        finally:
            probe.close()
    assert not result.ok
    assert "connection closed before a response" in result.error
    assert srv.accepts == 2


async def test_reused_connection_broken_mid_response_is_not_retried() -> None:
    async def partial_second_answer(conn: Conn) -> None:
        await conn.request()
        await conn.answer()
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\nContent-Le")  # and close: some bytes came

    async with http_server(partial_second_answer) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            assert (await check(probe)).ok
            result = await check(probe)
        finally:
            probe.close()
    assert not result.ok
    assert result.error.startswith(f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: ")
    assert srv.accepts == 1


async def test_chunked_answers_are_read_to_their_end_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"
    )

    async def answer_chunked(conn: Conn) -> None:
        while True:
            await conn.request()
            await conn.answer(chunked)

    async with http_server(answer_chunked) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            for _ in range(3):
                result = await check(probe)
                assert result.ok, result.error
        finally:
            probe.close()
    assert srv.accepts == 1
    assert len(srv.requests) == 3


async def test_kept_connection_to_a_server_that_went_away_fails_as_refused() -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        assert (await check(probe)).ok
    try:  # the server and its connections are gone now; nothing listens on the port
        result = await check(probe)
    finally:
        probe.close()
    assert not result.ok
    assert result.error == (
        f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: connection refused"
    )


async def test_server_answering_connection_close_gets_a_new_connection_each_check() -> None:
    async def answer_with_close_but_stay_open(conn: Conn) -> None:
        while True:  # says "close" but would serve more: the client must not reuse it
            await conn.request()
            await conn.answer(OK_CLOSE)

    async with http_server(answer_with_close_but_stay_open) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            for _ in range(3):
                result = await check(probe)
                assert result.ok, result.error
        finally:
            probe.close()
    assert srv.accepts == 3
    assert srv.connections_used == [1, 2, 3]


async def test_long_interval_sends_connection_close_and_does_not_keep() -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port, interval=60.0))
        try:
            for _ in range(2):
                result = await check(probe)
                assert result.ok, result.error
        finally:
            probe.close()
    assert srv.accepts == 2
    assert len(srv.requests) == 2
    for _, head in srv.requests:
        assert b"\r\nConnection: close\r\n" in head


async def test_interval_of_exactly_30s_still_keeps_the_connection() -> None:
    async with http_server(keep_answering) as srv:
        probe = HttpProbe(http_cfg(srv.port, interval=30.0))
        try:
            for _ in range(2):
                assert (await check(probe)).ok
        finally:
            probe.close()
    assert srv.accepts == 1
    assert all(b"connection: close" not in head.lower() for _, head in srv.requests)


async def test_large_body_is_healthy_and_the_next_check_uses_a_fresh_connection() -> None:
    body = b"y" * (1024 * 1024)
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def big_first(conn: Conn) -> None:
        await conn.request()
        if conn.number == 1:
            await conn.answer(big)  # the client stops reading at 10 KiB and hangs up
            await conn.request()
            return
        await conn.answer()
        await keep_answering(conn)

    async with http_server(big_first) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            first = await check(probe)
            assert first.ok, first.error
            second = await check(probe)
            assert second.ok, second.error
        finally:
            probe.close()
    assert srv.accepts == 2
    assert srv.connections_used == [1, 2]
    assert len(body) > MAX_BODY_BYTES


async def test_large_error_body_is_cut_to_a_snippet() -> None:
    body = b"e" * (1024 * 1024)
    raw = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def answer_big_error(conn: Conn) -> None:
        await conn.request()
        await conn.answer(raw)

    async with http_server(answer_big_error) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            result = await check(probe)
        finally:
            probe.close()
    assert not result.ok
    assert result.error.startswith(f"HTTP 500 from http://127.0.0.1:{srv.port}/healthz: eee")
    assert len(result.error) < 400


async def test_reused_connection_that_hangs_times_out_then_a_new_one_is_opened() -> None:
    async def hang_on_the_second_request(conn: Conn) -> None:
        await conn.request()
        await conn.answer()
        if conn.number == 1:
            await conn.request()
            await asyncio.sleep(3600)
        await keep_answering(conn)

    async with http_server(hang_on_the_second_request) as srv:
        probe = HttpProbe(http_cfg(srv.port, timeout=0.5))
        try:
            first = await check(probe)
            assert first.ok, first.error
            hung = await check(probe)
            assert not hung.ok
            assert hung.error == (f"timed out after 500ms: GET http://127.0.0.1:{srv.port}/healthz")
            assert hung.duration >= 0.5 - 0.005  # the loop clock has 1 ms resolution
            after = await check(probe)
            assert after.ok, after.error
        finally:
            probe.close()
    assert srv.accepts == 2
    assert srv.connections_used == [1, 1, 2]


async def test_server_talking_out_of_turn_is_not_reused() -> None:
    async def answer_then_babble(conn: Conn) -> None:
        await conn.request()
        await conn.answer()
        if conn.number == 1:
            await asyncio.sleep(0.02)
            await conn.answer(OK)  # an answer nobody asked for
        await keep_answering(conn)

    async with http_server(answer_then_babble) as srv:
        probe = HttpProbe(http_cfg(srv.port))
        try:
            assert (await check(probe)).ok
            await until("connection 1 to be dropped", lambda: srv.closed == [1])
            second = await check(probe)
            assert second.ok, second.error
        finally:
            probe.close()
    assert srv.accepts == 2


async def test_a_new_address_never_reuses_the_connection_to_the_old_one() -> None:
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(http_server(keep_answering, "127.0.0.1"))
        second = await stack.enter_async_context(
            http_server(keep_answering, "127.0.0.2", first.port)
        )
        probe = HttpProbe(http_cfg(first.port))
        try:
            assert (await check(probe, "127.0.0.1")).ok
            moved = await check(probe, "127.0.0.2")
            assert moved.ok, moved.error
            assert (await check(probe, "127.0.0.2")).ok
        finally:
            probe.close()
    assert (first.accepts, len(first.requests)) == (1, 1)
    assert (second.accepts, len(second.requests)) == (1, 2)
    assert b"Host: 127.0.0.2:" in second.requests[0][1]


# -- name resolution ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("no-such-host.invalid", id="no-such-host"),
        # a typo: an empty label, which the IDNA encoder refuses before any lookup
        pytest.param("db..internal", id="empty-label"),
    ],
)
async def test_unresolvable_host_name_fails_with_a_clear_error_and_no_exception(
    name: str,
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    probe = HttpProbe(http_cfg(8080, timeout=1.0))
    try:
        result = await check(probe, name)
    finally:
        probe.close()
        await asyncio.sleep(0.05)
        loop.set_exception_handler(None)
    assert not result.ok
    prefix = f"HTTP check failed: http://{name}:8080/healthz: "
    assert result.error.startswith(prefix), result.error
    reason = result.error.removeprefix(prefix)
    assert reason
    assert "unknown error" not in reason  # a getaddrinfo code is not an errno
    assert [c.get("message") for c in errors] == []
