"""healthd.checks.run_check against real servers and real commands on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from healthd.checks import run_check
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult
from healthd.process import run_process

from .harness import alive, free_port, kill_group, nginx_conf, pids_with, wait_for

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    host: str
    port: int
    accepted: int = 0


@contextlib.asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[Server]:
    """An asyncio TCP server on loopback; every connection is closed when the block ends."""
    tasks: set[asyncio.Task[object]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(wrapped, host, 0)
    info = Server(host, server.sockets[0].getsockname()[1])
    try:
        yield info
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def respond(raw: bytes) -> Handler:
    """A handler that reads the request head, writes ``raw`` and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()

    return handler


def http_cfg(port: int, timeout: float = 5.0) -> WorkloadConfig:
    return WorkloadConfig(workload="w", type="http", port=port, timeout=timeout).with_defaults()


def exec_cfg(command: str, timeout: float = 5.0) -> WorkloadConfig:
    return WorkloadConfig(workload="w", type="exec", target=command, timeout=timeout)


async def check_http(raw: bytes, timeout: float = 5.0) -> tuple[CheckResult, int]:
    async with serve(respond(raw)) as srv:
        return await run_check(http_cfg(srv.port, timeout), "127.0.0.1"), srv.port


# -- http --------------------------------------------------------------------------------------


async def test_http_200_is_healthy() -> None:
    result, _ = await check_http(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert result.ok, result.error
    assert result.error == ""


async def test_http_500_is_unhealthy_with_url_and_body_snippet() -> None:
    body = b"database  is\ndown " + b"x" * 1000
    raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    result, port = await check_http(raw)
    assert not result.ok
    assert result.error.startswith(f"HTTP 500 from http://127.0.0.1:{port}/healthz: ")
    assert "database is down xxx" in result.error  # whitespace folded
    assert len(result.error) < 400  # a snippet, not the whole body


async def test_http_redirect_elsewhere_is_healthy_and_not_followed() -> None:
    async with serve(respond(b"HTTP/1.1 200 OK\r\n\r\n"), host="127.0.0.2") as other:
        location = f"http://127.0.0.2:{other.port}/healthz"
        raw = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        result, _ = await check_http(raw.encode())
        await asyncio.sleep(0.3)  # a follow-up request would have arrived by now
        assert result.ok, result.error
        assert other.accepted == 0


async def test_http_connection_refused() -> None:
    port = free_port()
    result = await run_check(http_cfg(port), "127.0.0.1")
    assert not result.ok
    assert "connection refused" in result.error
    assert f"http://127.0.0.1:{port}/healthz" in result.error


async def test_http_server_that_never_answers_fails_at_the_deadline() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with serve(silent) as srv:
        result = await run_check(http_cfg(srv.port, timeout=0.5), "127.0.0.1")
    assert not result.ok
    assert "timed out after 500ms" in result.error
    assert 0.5 <= result.duration < 2.5


async def test_http_garbage_is_a_malformed_response() -> None:
    result, _ = await check_http(b"SSH-2.0-OpenSSH_9.6\r\nnot http at all\r\n\r\n")
    assert not result.ok
    assert "malformed HTTP response" in result.error


async def test_http_headers_over_64_kib_fail() -> None:
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))
    result, _ = await check_http(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n")
    assert not result.ok
    assert "response headers larger than 64 KiB" in result.error


async def test_http_large_body_with_200_is_healthy() -> None:
    body = b"y" * (1024 * 1024)
    result, _ = await check_http(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert result.ok, result.error


async def test_http_connection_closed_before_any_response() -> None:
    result, _ = await check_http(b"")
    assert not result.ok
    assert "connection closed before a response" in result.error


async def test_http_against_nginx(tmp_path: Path, require_binary: Callable[[str], str]) -> None:
    nginx = require_binary("nginx")
    port = free_port()
    info = await asyncio.create_subprocess_exec(nginx, "-V", stderr=asyncio.subprocess.PIPE)
    _, build_info = await info.communicate()
    conf = nginx_conf(
        tmp_path,
        port,
        build_info.decode(),
        ok_path="/healthz",
        down_body="maintenance",
        connections=64,
    )
    error_log = tmp_path / "error.log"
    proc = await asyncio.create_subprocess_exec(
        *[nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(error_log)],
        *["-g", "daemon off;"],
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        cfg = http_cfg(port, timeout=2.0)
        deadline = time.monotonic() + 15
        result = await run_check(cfg, "127.0.0.1")
        while not result.ok and proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            result = await run_check(cfg, "127.0.0.1")
        assert result.ok, f"{result.error}\n{error_log.read_text()}"
        other = WorkloadConfig(workload="w", type="http", port=port, target="/other")
        bad = await run_check(other, "127.0.0.1")
        assert not bad.ok
        assert bad.error == f"HTTP 503 from http://127.0.0.1:{port}/other: maintenance"
    finally:
        kill_group(proc.pid)
        await proc.wait()


# -- tcp ---------------------------------------------------------------------------------------


async def test_tcp_open_port_is_healthy() -> None:
    async with serve(respond(b"")) as srv:
        cfg = WorkloadConfig(workload="w", type="tcp", port=srv.port).with_defaults()
        result = await run_check(cfg, "127.0.0.1")
    assert result.ok, result.error


async def test_tcp_closed_port_is_unhealthy() -> None:
    port = free_port()
    cfg = WorkloadConfig(workload="w", type="tcp", port=port).with_defaults()
    result = await run_check(cfg, "127.0.0.1")
    assert not result.ok
    assert result.error == f"TCP check failed: 127.0.0.1:{port}: connection refused"


# -- exec --------------------------------------------------------------------------------------


async def test_exec_exit_0_is_healthy() -> None:
    result = await run_check(exec_cfg("exit 0"), "")
    assert result.ok, result.error


async def test_exec_exit_3_is_unhealthy_with_output() -> None:
    result = await run_check(exec_cfg("echo disk full; echo on stderr >&2; exit 3"), "")
    assert not result.ok
    assert result.error.startswith("exec check failed: exit status 3: ")
    assert "disk full" in result.error
    assert "on stderr" in result.error


async def test_exec_output_over_4_kib_is_cut() -> None:
    result = await run_check(exec_cfg("head -c 20000 /dev/zero | tr '\\0' a; exit 1"), "")
    assert not result.ok
    assert result.error.endswith("a...")
    assert result.error.count("a") - "exec check failed: exit status 1: ".count("a") == 4096


async def test_exec_killed_by_a_signal_says_which() -> None:
    result = await run_check(exec_cfg("kill -9 $$"), "")
    assert not result.ok
    assert "killed by SIGKILL" in result.error


async def test_exec_killed_by_sigterm_is_still_a_failure_when_nothing_is_stopping() -> None:
    # Held back a moment (a service stop signals every process), then reported as usual.
    result = await run_check(exec_cfg("kill -TERM $$"), "")
    assert not result.ok
    assert "killed by SIGTERM" in result.error


async def test_exec_past_its_timeout_fails() -> None:
    result = await run_check(exec_cfg("sleep 30", timeout=0.5), "")
    assert not result.ok
    assert "timed out" in result.error
    assert "sleep 30" in result.error


def stubborn_script(tmp_path: Path, pidfile: Path) -> Path:
    """A script that ignores SIGTERM, records its pid and runs for a minute."""
    script = tmp_path / "stubborn.sh"
    script.write_text(
        f"trap '' TERM\necho $$ > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\n"
        "i=0\nwhile [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done\n"
    )
    return script


async def test_exec_grandchild_ignoring_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild ignores SIGTERM, keeps the check's stdout open and would outlive the
    # deadline by far; the unique tmp path in its command line lets us look for leftovers.
    script = stubborn_script(tmp_path, pidfile)
    started = time.monotonic()
    result = await run_check(exec_cfg(f"sh {script} & sleep 60", timeout=0.5), "")
    elapsed = time.monotonic() - started
    try:
        assert not result.ok
        assert "timed out after 500ms" in result.error
        assert elapsed < 0.5 + 2  # a bound on the cleanup, not a speed claim
        wait_for("the grandchild's pidfile", pidfile.exists, timeout=5)
        pid = int(pidfile.read_text())
        wait_for(f"grandchild {pid} to be gone", lambda: not alive(pid), timeout=3)
        assert pids_with(str(script)) == []
    finally:
        for pid in pids_with(str(script)):
            os.kill(pid, signal.SIGKILL)


async def test_exec_background_leftover_is_killed_after_a_success(tmp_path: Path) -> None:
    pidfile = tmp_path / "leftover.pid"
    script = stubborn_script(tmp_path, pidfile)
    command = f"sh {script} & while [ ! -s {pidfile} ]; do sleep 0.01; done; exit 0"
    result = await run_check(exec_cfg(command), "")
    try:
        assert result.ok, result.error
        pid = int(pidfile.read_text())
        wait_for(f"leftover {pid} to be gone", lambda: not alive(pid), timeout=3)
        assert pids_with(str(script)) == []
    finally:
        for pid in pids_with(str(script)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "command",
    ["true", "false", "ls /no/such/dir", "cat /proc/self/status", "sleep 0.05", "sh -c 'exit 7'"],
)
async def test_exec_verdict_and_output_are_the_same_with_or_without_a_shell(command: str) -> None:
    """Plain commands run without sh (direct_argv): nothing a check reports may change."""
    direct = await run_check(exec_cfg(command), "")
    through_sh = await run_process(["sh", "-c", command], 5)
    assert direct.ok == through_sh.ok
    if not direct.ok:
        assert direct.error == f"exec check failed: {through_sh.describe()}"
