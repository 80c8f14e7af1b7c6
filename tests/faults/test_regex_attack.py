"""A monitored service that turns the operator's own regular expression against the daemon.

``^(a|aa)+$`` is a reasonable-looking pattern; against a run of ``a`` that ends in ``!`` a
backtracking engine (Python's ``re``) tries every way of splitting the run, exponentially
many, on the event loop: every check stops, the API stops answering, SIGTERM is not seen. The
service chooses the text, as an HTTP body or a command's output. healthd matches with RE2, in
linear time: the check is an ordinary failure, over in milliseconds.

Each test does the attack for real, from a server (or a command) on this machine, through
``healthd check`` and through ``healthd run``. Everything waited for is bounded, so that a
backtracking engine makes these tests fail, not hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healthd.checks import patterns
from healthd.checks.exec import OUTPUT_CAP, SHOWN_CHARS
from healthd.checks.http_probe import ERROR_BODY_CHARS, MAX_BODY_BYTES
from healthd.config import editor
from healthd.config.workload import WorkloadConfig
from integration.harness import ApiClient, DaemonProc, run_cli, write

from .targets import canary_keeps_going, checks_done, history, start_with_canary

PATTERN = "^(a|aa)+$"
REGEX = patterns.compile(PATTERN)
# 64 a's take a backtracking engine longer than anyone waits; the longest runs the check reads
# in full (the body's 10 KiB, the output's 4 KiB) take it forever, and RE2 still no time
RUNS = {"short": 64, "long": 0}  # 0: the longest
CHECK_TIMEOUT = 5.0
QUICK = 1.0  # seconds: a check that took longer did not match in linear time


def body_of(run: str) -> bytes:
    return b"a" * (RUNS[run] or MAX_BODY_BYTES - 1) + b"!"


def output_of(run: str) -> str:
    return "a" * (RUNS[run] or OUTPUT_CAP - 1) + "!"


def printing(output: str) -> str:
    """A command line that prints ``output`` (a's and a final !) without a newline."""
    return f"printf '%{len(output) - 1}s!' '' | tr ' ' a"


def body_error(port: int, body: bytes) -> str:
    read = f"first {MAX_BODY_BYTES // 1024} KiB" if len(body) >= MAX_BODY_BYTES else "body"
    text = body.decode()[:ERROR_BODY_CHARS]
    return (
        f"HTTP 200 from http://127.0.0.1:{port}/healthz: body does not match {PATTERN!r} "
        f"({read}: {text})"
    )


def output_error(output: str) -> str:
    shown = repr(output[:SHOWN_CHARS]) + ("..." if len(output) > SHOWN_CHARS else "")
    return f"exec check failed: exit status 0, but the output does not match {PATTERN!r}: {shown}"


@contextlib.contextmanager
def serving(body: bytes) -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 (its own thread and event loop) that answers every
    request, on kept connections too, with 200 and ``body``. Yields its port, the OS's pick."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    started: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = queue.Queue()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()

    async def main() -> None:
        stop = asyncio.Event()
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        started.put((asyncio.get_running_loop(), stop, server.sockets[0].getsockname()[1]))
        async with server:
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="body-server")
    thread.start()
    loop, stop, port = started.get(timeout=10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


def check_from_the_cli(tmp_path: Path, env: dict[str, str], name: str) -> tuple[float, str]:
    """``healthd check NAME`` with no daemon running: (the check's duration, its error).
    The process is killed after 20 s: a check that hangs its loop never reaches its timeout."""
    daemon_config = tmp_path / "healthd.yaml"
    daemon_config.write_text("# no API: the check runs in the CLI\n")
    done = run_cli(
        [
            "check",
            name,
            "--config-dir",
            str(tmp_path / "config"),
            "--status-dir",
            str(tmp_path / "status"),
            "--daemon-config",
            str(daemon_config),
            # not the default port, where another daemon may answer
            "--api",
            str(tmp_path / "no-daemon.sock"),
        ],
        env,
        timeout=20,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = re.fullmatch(rf"{name}: unhealthy \(([0-9.]+) ms\) (.*)\n", done.stdout)
    assert found is not None, done.stdout + done.stderr
    return float(found.group(1)) / 1000, found.group(2)


def config(tmp_path: Path, name: str, kind: str, **fields: Any) -> None:
    cfg = WorkloadConfig(workload=name, type=kind, timeout=CHECK_TIMEOUT, **fields)
    editor.write(tmp_path / "config", cfg)


# -- one check, from the CLI ----------------------------------------------------------------------


@pytest.mark.parametrize("run", RUNS)
def test_http_body_against_the_regex_is_a_quick_failure(
    tmp_path: Path, env: dict[str, str], run: str
) -> None:
    body = body_of(run)
    with serving(body) as port:
        config(tmp_path, "web", "http", host="127.0.0.1", port=port, body_regex=REGEX)
        took, error = check_from_the_cli(tmp_path, env, "web")
    assert error == body_error(port, body)
    assert took < QUICK, f"the check took {took:.3f}s"


@pytest.mark.parametrize("run", RUNS)
def test_exec_output_against_the_regex_is_a_quick_failure(
    tmp_path: Path, env: dict[str, str], run: str
) -> None:
    output = output_of(run)
    config(tmp_path, "job", "exec", target=printing(output), expect_output_regex=REGEX)
    took, error = check_from_the_cli(tmp_path, env, "job")
    assert error == output_error(output)
    assert took < QUICK, f"the check took {took:.3f}s"


# -- the daemon under attack ----------------------------------------------------------------------


def wait_for_checks(client: ApiClient, name: str, total: int) -> None:
    client.wait_status(name, lambda s: s["total_checks"] >= total)


def attacked_daemon_goes_on(daemon: DaemonProc, errors: dict[str, str]) -> None:
    """With the attacking workloads (name -> their error) written: each fails quickly, again
    and again, while the canary keeps its schedule and the API answers; SIGTERM stops it."""
    client = start_with_canary(daemon)
    for name, error in errors.items():
        status = client.wait_status(name, lambda s: s["state"] == "unhealthy")
        assert status["last_error"] == error
        assert status["last_check_duration_seconds"] < QUICK, status
    for name in errors:  # checked on schedule, not once and stuck
        wait_for_checks(client, name, checks_done(client, name) + 3)
        assert all(r["duration_seconds"] < QUICK for r in history(client, name))
    started = time.monotonic()
    canary_keeps_going(client, checks=10)  # 0.1 s apart
    assert time.monotonic() - started < 5
    started = time.monotonic()
    assert client.call("GET", "/v1/status").status == 200
    assert time.monotonic() - started < QUICK
    started = time.monotonic()
    assert daemon.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5


def test_daemon_goes_on_while_http_bodies_attack_the_regex(daemon: DaemonProc) -> None:
    with serving(body_of("short")) as short, serving(body_of("long")) as long:
        for name, port in (("short", short), ("long", long)):
            write(
                daemon,
                name,
                "http",
                host="127.0.0.1",
                port=port,
                body_regex=REGEX,
                timeout=CHECK_TIMEOUT,
                retries=1,
            )
        attacked_daemon_goes_on(
            daemon,
            {
                "short": body_error(short, body_of("short")),
                "long": body_error(long, body_of("long")),
            },
        )


def test_daemon_goes_on_while_command_output_attacks_the_regex(daemon: DaemonProc) -> None:
    for run in RUNS:
        write(
            daemon,
            run,
            "exec",
            target=printing(output_of(run)),
            expect_output_regex=REGEX,
            timeout=CHECK_TIMEOUT,
            retries=1,
        )
    attacked_daemon_goes_on(daemon, {run: output_error(output_of(run)) for run in RUNS})
