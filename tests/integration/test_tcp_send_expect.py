"""tcp checks' send/expect against a real redis-server and real loopback servers.

The point of the feature: a SIGSTOPped redis still completes TCP handshakes from its listen
backlog, so a plain connect check calls it healthy; PING / +PONG does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from healthd.checks import run_check
from healthd.checks.tcp import TcpProbe
from healthd.checks.tcp_talk import READ_CAP
from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

from .harness import DaemonProc, connect, free_port, write
from .redis_server import Redis, running_redis

PING, PONG = "PING\r\n", "+PONG"


@pytest.fixture
def redis(
    require_binary: Callable[[str], str], tmp_path: Path, env: dict[str, str]
) -> Iterator[Redis]:
    with running_redis(require_binary("redis-server"), tmp_path / "redis", env) as server:
        yield server


def cfg_for(
    port: int, timeout: float = 5.0, *, send: str | None = None, expect: str | None = None
) -> WorkloadConfig:
    return WorkloadConfig(
        workload="w", type="tcp", port=port, timeout=timeout, send=send, expect=expect
    )


# -- redis ----------------------------------------------------------------------------------------


async def test_redis_ping_pong_is_healthy_as_loaded_from_a_file(redis: Redis) -> None:
    # the escapes of a double-quoted YAML value are what reaches the socket
    text = f'workload: w\ntype: tcp\nport: {redis.port}\nsend: "PING\\r\\n"\nexpect: "+PONG"\n'
    cfg, problems = parse_text(text, "w.yaml", "w")
    assert problems == []
    assert cfg is not None
    assert cfg.send == "PING\r\n"
    for address in ("127.0.0.1", "localhost"):  # an IP literal, and a name through the resolver
        result = await run_check(cfg, address)
        assert result.ok, f"{address}: {result.error}"


async def test_stopped_redis_passes_a_connect_but_fails_ping(redis: Redis) -> None:
    plain = cfg_for(redis.port, timeout=1.0)
    talking = cfg_for(redis.port, timeout=1.0, send=PING, expect=PONG)
    redis.stop()
    try:
        connected = await run_check(plain, "127.0.0.1")
        pinged = await run_check(talking, "127.0.0.1")
    finally:
        redis.resume()
    assert connected.ok, connected.error  # the backlog accepted it
    assert not pinged.ok
    assert pinged.error == (
        f"timed out after 1s: tcp 127.0.0.1:{redis.port}: expected '+PONG', got nothing"
    )
    again = await run_check(talking, "127.0.0.1")  # and it answers once running again
    assert again.ok, again.error


async def test_wrong_answer_names_what_came(redis: Redis) -> None:
    result = await run_check(cfg_for(redis.port, 1.0, send="PNG\r\n", expect="+PONG"), "127.0.0.1")
    assert not result.ok
    # redis keeps the connection open after an error reply: the deadline ends the wait
    assert result.error == (
        f"timed out after 1s: tcp 127.0.0.1:{redis.port}: expected '+PONG', got "
        "\"-ERR unknown command 'PNG', with args beginning with: \\r\\n\""
    )


async def test_wrong_answer_then_close_fails_at_once(redis: Redis) -> None:
    cfg = cfg_for(redis.port, 10.0, send="PNG\r\nQUIT\r\n", expect="+PONG")
    result = await run_check(cfg, "127.0.0.1")
    assert not result.ok
    assert result.error.startswith(
        f"TCP check failed: 127.0.0.1:{redis.port}: expected '+PONG', got \"-ERR unknown command"
    )
    assert result.error.endswith('+OK\\r\\n" (connection closed)'), result.error
    assert result.duration < 5.0  # the close decided it, not the 10 s deadline


async def test_refused_port_reads_like_a_plain_tcp_check() -> None:
    port = free_port()
    result = await run_check(cfg_for(port, send=PING, expect=PONG), "127.0.0.1")
    assert result.error == f"TCP check failed: 127.0.0.1:{port}: connection refused"


# -- banner protocols (expect without send) and hostile peers -------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """An asyncio server on 127.0.0.1 running ``handler`` per connection; yields its port."""
    tasks: set[asyncio.Task[object]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(OSError):
                await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def banner(text: bytes, *, then_close: bool) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        if not then_close:
            await reader.read()  # until the check hangs up

    return handler


async def test_smtp_like_banner_without_send_is_healthy() -> None:
    async with serving(banner(b"220 mail.test ESMTP ready\r\n", then_close=False)) as port:
        result = await run_check(cfg_for(port, expect="220 "), "127.0.0.1")
    assert result.ok, result.error


async def test_banner_split_across_writes_still_matches() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in (b"SSH-2", b".0-Open", b"SSH_9.2\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await reader.read()

    async with serving(slow) as port:
        result = await run_check(cfg_for(port, expect="SSH-2.0-"), "127.0.0.1")
    assert result.ok, result.error


async def test_busy_banner_and_close_is_unhealthy_with_the_banner() -> None:
    async with serving(banner(b"554 too busy\r\n", then_close=True)) as port:
        result = await run_check(cfg_for(port, expect="220"), "127.0.0.1")
    assert not result.ok
    assert result.error == (
        f"TCP check failed: 127.0.0.1:{port}: expected '220', got '554 too busy\\r\\n' "
        "(connection closed)"
    )


async def test_a_flood_without_the_answer_stops_at_the_read_cap() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xffnoise" * 100_000)
        await writer.drain()
        await reader.read()

    async with serving(flood) as port:
        result = await run_check(cfg_for(port, expect="+PONG"), "127.0.0.1")
    assert not result.ok
    assert result.error.startswith(f"TCP check failed: 127.0.0.1:{port}: expected '+PONG', got ")
    assert result.error.endswith(f"... (no match in the first {READ_CAP} bytes)")
    assert "\\x00" in result.error  # control characters escaped, never raw
    assert len(result.error) < 300  # what came is cut short in the error


async def test_a_reset_is_named() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.write(b"+PO")
        await writer.drain()
        writer.transport.abort()

    async with serving(reset) as port:
        result = await run_check(cfg_for(port, send=PING, expect=PONG), "127.0.0.1")
    assert not result.ok
    # what came before the reset is kept: the kernel hands it over before the error
    assert result.error == (
        f"TCP check failed: 127.0.0.1:{port}: expected '+PONG', got '+PO' "
        "(connection reset by peer)"
    )


async def test_a_big_send_goes_out_in_pieces_as_the_peer_reads() -> None:
    size = 16 * 1024 * 1024  # well past what the socket buffers take at once

    async def read_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(size)
        writer.write(b"GOT IT\r\n")
        await writer.drain()
        await reader.read()

    async with serving(read_all) as port:
        cfg = cfg_for(port, 30.0, send="x" * size, expect="GOT IT")
        result = await run_check(cfg, "127.0.0.1")
    assert result.ok, result.error


async def test_a_peer_that_never_reads_times_out_while_sending() -> None:
    size = 16 * 1024 * 1024

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    # the kernels take a few MiB at most (send buffer, and a receive window that only grows
    # as the application reads)
    async with serving(deaf) as port:
        result = await run_check(cfg_for(port, 1.0, send="x" * size, expect="OK"), "127.0.0.1")
    assert not result.ok
    assert result.error.startswith(f"timed out after 1s: tcp 127.0.0.1:{port}: sending: ")
    assert result.error.endswith(f" of {size} bytes not taken by the peer")


async def test_checks_leave_no_descriptor_behind() -> None:
    answers = [b"+PONG\r\n", b"-ERR\r\n"]

    async def alternate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6)
        writer.write(answers[0])
        answers.reverse()
        await writer.drain()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async with serving(alternate) as port:
        probe = TcpProbe(cfg_for(port, 0.3, send=PING, expect=PONG))
        results: list[CheckResult] = []
        try:
            for _ in range(2):  # warm up
                results.append(await _check(probe))
            await asyncio.sleep(0.05)
            before = open_fds()
            for _ in range(20):
                results.append(await _check(probe))
            await asyncio.sleep(0.05)
            assert open_fds() == before
        finally:
            probe.close()
    assert [r.ok for r in results] == [True, False] * 11
    assert {r.error for r in results if not r.ok} == {
        f"TCP check failed: 127.0.0.1:{port}: expected '+PONG', got '-ERR\\r\\n' "
        "(connection closed)"
    }


async def _check(probe: TcpProbe) -> CheckResult:
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe.start("127.0.0.1", result.set_result)
    return await result


# -- the daemon -----------------------------------------------------------------------------------


def test_daemon_tells_a_wedged_redis_from_a_listening_port(
    daemon: DaemonProc, redis: Redis
) -> None:
    common = {"port": redis.port, "host": "127.0.0.1", "retries": 1, "timeout": 0.5}
    write(daemon, "connects", "tcp", **common)
    path = write(daemon, "pings", "tcp", **common, send=PING, expect=PONG)
    assert 'send: "PING\\r\\n"' in path.read_text()  # written so that it reads back the same
    daemon.start()
    api = connect(daemon)
    for name in ("connects", "pings"):
        api.wait_status(name, lambda s: s["state"] == "healthy")
    redis.stop()
    try:
        down = api.wait_status("pings", lambda s: s["state"] == "unhealthy")
        assert "expected '+PONG', got nothing" in down["last_error"], down
        assert api.get("/v1/status/connects")["state"] == "healthy"
    finally:
        redis.resume()
    api.wait_status("pings", lambda s: s["state"] == "healthy")
