"""TcpProbe against real loopback sockets: IP literals, names through the resolver, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from healthd.checks import tcp
from healthd.checks.probe import numeric_family
from healthd.checks.tcp import TcpProbe
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

from .harness import free_port


@contextlib.asynccontextmanager
async def listening(port: int = 0) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 that closes what it accepts; yields (port, [accept count])."""
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: connects hang."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler meanwhile (an escaped task exception...)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(None)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tcp_cfg(port: int, timeout: float = 5.0) -> WorkloadConfig:
    return WorkloadConfig(workload="w", type="tcp", port=port, timeout=timeout).with_defaults()


async def check(probe: TcpProbe, address: str) -> CheckResult:
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe.start(address, result.set_result)  # may settle before start returns
    async with asyncio.timeout(probe.cfg.timeout + 5):  # the probe's deadline comes first
        return await result


async def settle() -> None:
    """Let the loop run the callbacks that follow a result (closing sockets, tasks ending)."""
    for _ in range(3):
        await asyncio.sleep(0.01)


# -- IP literals ----------------------------------------------------------------------------------


async def test_open_port_is_healthy_check_after_check_without_leaking_sockets() -> None:
    async with listening() as (port, accepted):
        probe = TcpProbe(tcp_cfg(port))
        await check(probe, "127.0.0.1")  # warm up whatever the loop opens once
        await settle()
        before = open_fds()
        try:
            for i in range(10):
                result = await check(probe, "127.0.0.1")
                assert result.ok, f"check {i}: {result.error}"
                assert result.error == ""
        finally:
            probe.close()
        await settle()
        assert open_fds() == before
        for _ in range(100):
            if accepted[0] == 11:
                break
            await asyncio.sleep(0.01)
        assert accepted[0] == 11  # every check really connected


async def test_refused_port_error_text() -> None:
    port = free_port()
    probe = TcpProbe(tcp_cfg(port))
    try:
        result = await check(probe, "127.0.0.1")
    finally:
        probe.close()
    assert not result.ok
    assert result.error == f"TCP check failed: 127.0.0.1:{port}: connection refused"


async def test_one_probe_follows_the_port_going_down_and_up() -> None:
    probe = TcpProbe(tcp_cfg(free_port()))
    port = probe.cfg.port
    try:
        async with listening(port):
            up = await check(probe, "127.0.0.1")
            assert up.ok, up.error
        down = await check(probe, "127.0.0.1")  # the listener is closed now
        assert down.error == f"TCP check failed: 127.0.0.1:{port}: connection refused"
        async with listening(port):
            again = await check(probe, "127.0.0.1")
            assert again.ok, again.error
    finally:
        probe.close()


async def test_connect_that_never_completes_times_out_and_releases_the_socket() -> None:
    with full_backlog() as port:
        probe = TcpProbe(tcp_cfg(port, timeout=0.5))
        await settle()
        before = open_fds()
        try:
            result = await check(probe, "127.0.0.1")
        finally:
            probe.close()
        await settle()
        assert open_fds() == before
    assert not result.ok
    assert result.error == f"timed out after 500ms: tcp 127.0.0.1:{port}"
    assert result.duration >= 0.5 - 0.005  # the loop clock has 1 ms resolution


# -- names ----------------------------------------------------------------------------------------


async def test_localhost_is_resolved_and_healthy() -> None:
    assert numeric_family("localhost") is None  # so the probe goes through the resolver
    async with listening() as (port, accepted):
        probe = TcpProbe(tcp_cfg(port))
        try:
            with loop_errors() as errors:
                for _ in range(3):
                    result = await check(probe, "localhost")
                    assert result.ok, result.error
                await settle()
        finally:
            probe.close()
    assert errors == []
    assert accepted[0] >= 1


async def test_localhost_refused_names_the_host_as_configured() -> None:
    port = free_port()
    probe = TcpProbe(tcp_cfg(port))
    try:
        result = await check(probe, "localhost")
    finally:
        probe.close()
    assert not result.ok
    assert result.error == f"TCP check failed: localhost:{port}: connection refused"


async def test_localhost_connect_that_never_completes_times_out_cleanly() -> None:
    with full_backlog() as port:
        probe = TcpProbe(tcp_cfg(port, timeout=0.5))
        await settle()
        before = open_fds()
        with loop_errors() as errors:
            try:
                result = await check(probe, "localhost")
            finally:
                probe.close()
            await settle()
        assert open_fds() == before
    assert errors == []
    assert not result.ok
    assert result.error == f"timed out after 500ms: tcp localhost:{port}"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("no-such-host.invalid", id="no-such-host"),
        # a typo: an empty label, which the IDNA encoder refuses before any lookup
        pytest.param("db..internal", id="empty-label"),
        pytest.param("x" * 64 + ".example.com", id="label-over-63-chars"),
    ],
)
async def test_unresolvable_name_fails_with_a_clear_error_and_no_exception(name: str) -> None:
    port = free_port()
    probe = TcpProbe(tcp_cfg(port, timeout=1.0))
    with loop_errors() as errors:
        try:
            result = await check(probe, name)
        finally:
            probe.close()
        await settle()
    assert not result.ok
    prefix = f"TCP check failed: {name}:{port}: "
    assert result.error.startswith(prefix), result.error
    assert result.error != prefix
    assert [c.get("message") for c in errors] == []


# -- what the host refuses ------------------------------------------------------------------------


def _no_sockets(*args: Any, **kwargs: Any) -> socket.socket:
    """Making a socket fails like at the fd limit."""
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost"])
async def test_no_socket_to_be_had_is_a_failed_check_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setattr(tcp, "bare_socket", _no_sockets)
    port = free_port()
    probe = TcpProbe(tcp_cfg(port, timeout=1.0))
    with loop_errors() as errors:
        try:
            result = await check(probe, address)
        finally:
            probe.close()
        await settle()
    assert not result.ok
    assert result.error == f"TCP check failed: {address}:{port}: too many open files"
    assert not probe.running
    assert [c.get("message") for c in errors] == []
