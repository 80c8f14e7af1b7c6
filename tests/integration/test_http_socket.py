"""A plain http check to an IP address, on a bare socket (checks/http_socket.py), when the
connect does not complete within the call: the listener's accept queue is full, so the
kernel drops the check's SYN until the server accepts and the SYN is sent again (after about
a second). On loopback a connect otherwise completes at once, and this path is never taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator

from healthd.checks import run_check
from healthd.config.workload import WorkloadConfig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@contextlib.contextmanager
def full_listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listener that accepts nothing, with its accept queue filled by client sockets."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1)
    fillers: list[socket.socket] = []
    try:
        port = listener.getsockname()[1]
        while True:  # until a connect no longer completes: the queue is full
            sock = socket.socket()
            sock.setblocking(False)
            fillers.append(sock)
            err = sock.connect_ex(("127.0.0.1", port))
            if err == errno.EINPROGRESS and sock.connect_ex(("127.0.0.1", port)) in (
                errno.EINPROGRESS,
                errno.EALREADY,
            ):
                break
            assert len(fillers) < 64, "the accept queue never filled"
        yield listener, fillers
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def answer_everyone(listener: socket.socket, stop: threading.Event) -> None:
    """Accept and answer every connection: the check's once its request comes."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def answer(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        request = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(OK)


def cfg_for(port: int, timeout: float) -> WorkloadConfig:
    return WorkloadConfig(workload="w", type="http", port=port, timeout=timeout).with_defaults()


async def test_a_connect_that_completes_later_is_checked() -> None:
    with full_listener() as (listener, _):
        stop = threading.Event()
        server = threading.Thread(target=answer_everyone, args=(listener, stop))
        check = asyncio.ensure_future(
            run_check(cfg_for(listener.getsockname()[1], 5.0), "127.0.0.1")
        )
        await asyncio.sleep(0.3)  # the check's SYN was dropped: it waits for the retry
        assert not check.done()
        server.start()  # the queue drains; the retried SYN completes the connect
        try:
            result = await asyncio.wait_for(check, 10)
        finally:
            stop.set()
            server.join(5)
    assert result.ok, result.error
    assert result.duration > 0.3


async def test_a_connect_that_never_completes_times_out_and_leaves_no_socket() -> None:
    with full_listener() as (listener, _):
        port = listener.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        result = await run_check(cfg_for(port, 0.5), "127.0.0.1")
        after = len(os.listdir("/proc/self/fd"))
    assert result.error == f"timed out after 500ms: GET http://127.0.0.1:{port}/healthz"
    assert after == before
