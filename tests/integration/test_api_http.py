"""The API's HTTP server (``HttpServer``) over real sockets: keep-alive and pipelining, limits and
deadlines answered with their status codes, handler errors as JSON, and the Unix socket.

Each test runs the server in-process with a small handler of its own and talks to it with raw
asyncio streams, so every byte on the wire is the test's choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from healthd.api.http import HttpServer
from healthd.api.messages import HttpError, Limits, Request, Response, json_response
from healthd.logs import make_logger

FAST = Limits(header_timeout=0.3, idle_timeout=0.5)


@dataclass
class Echo:
    """The handler: answers what it was asked; a few paths misbehave on purpose.

    /slow?s=N sleeps N seconds first, /boom raises, /teapot raises an HttpError, /odd answers
    a status that has no name.
    """

    seen: list[Request] = field(default_factory=list)

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(float(request.query["s"][0]))
        if request.path == "/boom":
            raise RuntimeError("a bug in a handler")
        if request.path == "/teapot":
            raise HttpError(418, "short and stout", [("X-Tea", "earl grey")])
        if request.path == "/odd":
            return Response(299, b"{}")
        return json_response(
            200,
            {
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "body": request.body.decode(),
                "unix": request.peer.unix,
                "uid": request.peer.uid,
                "local": request.local,
            },
        )

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.seen]


@dataclass
class Served:
    server: HttpServer
    handler: Echo
    port: int
    log: io.StringIO


@contextlib.asynccontextmanager
async def serve(limits: Limits = FAST) -> AsyncIterator[Served]:
    log = io.StringIO()
    handler = Echo()
    server = HttpServer(handler, log=make_logger(stream=log), limits=limits)
    _, port = await server.listen_tcp("127.0.0.1", 0)
    try:
        yield Served(server, handler, port, log)
    finally:
        await server.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One connection, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def tcp(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @classmethod
    async def unix(cls, path: Path) -> Client:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, *, head_only: bool = False, timeout: float = 5.0) -> Reply:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = 0 if head_only else int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return Reply(int(status_line.split()[1]), headers, body)

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the connection (EOF or reset) within ``timeout``, with
        nothing more sent."""
        try:
            async with asyncio.timeout(timeout):
                rest = await self.reader.read()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        assert rest == b"", f"unexpected bytes before the end: {rest[:200]!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    client = await Client.tcp(port)
    try:
        yield client
    finally:
        await client.close()


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_of(reply: Reply) -> dict[str, Any]:
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert isinstance(error, dict)
    assert error["status"] == reply.status
    return error


async def until(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def elapsed_until_closed(client: Client, timeout: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await client.closed_by_server(timeout)
    return loop.time() - start


# -- keep-alive, HEAD, pipelining, close ---------------------------------------------------------


async def test_keep_alive_answers_two_requests_on_one_connection() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/one?x=1"))
        first = await client.reply()
        await client.send(get("/two"))
        second = await client.reply()
    assert (first.status, second.status) == (200, 200)
    assert first.json()["path"] == "/one"
    assert first.json()["query"] == {"x": ["1"]}
    assert second.json()["path"] == "/two"
    assert "connection" not in first.headers  # kept open
    assert first.headers["content-length"] == str(len(first.body))


async def test_head_has_the_headers_of_get_and_no_body() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/same", method="HEAD"))
        head = await client.reply(head_only=True)
        # If HEAD had sent a body, these bytes would be read as the next reply's start.
        await client.send(get("/same"))
        full = await client.reply()
    assert head.status == full.status == 200
    # the length of the body HEAD would have had: the echo names the method
    assert int(head.headers["content-length"]) == len(full.body.replace(b'"GET"', b'"HEAD"'))
    assert head.headers["content-type"] == full.headers["content-type"]
    assert s.handler.seen[0].method == "HEAD"


async def test_pipelined_requests_are_answered_in_the_order_sent() -> None:
    async with serve() as s, connect(s.port) as client:
        # one write: the first is the slowest, yet its answer must come first
        await client.send(get("/slow?s=0.2") + get("/fast") + get("/slow?s=0.05") + get("/last"))
        paths = [(await client.reply()).json()["path"] for _ in range(4)]
    assert paths == ["/slow", "/fast", "/slow", "/last"]
    assert s.handler.paths == paths  # one at a time, in order


async def test_connection_close_is_honoured() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/bye", "Connection: close"))
        reply = await client.reply()
        assert reply.status == 200
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_data_after_connection_close_in_the_same_write_is_ignored() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/bye", "Connection: close") + get("/never"))
        reply = await client.reply()
        assert reply.status == 200
        assert reply.json()["path"] == "/bye"
        assert await client.closed_by_server()
    assert s.handler.paths == ["/bye"]


async def test_http_1_0_request_without_keep_alive_is_answered_then_closed() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        reply = await client.reply()
        assert reply.status == 200
        assert await client.closed_by_server()


async def test_a_client_that_shuts_down_its_side_after_asking_still_gets_the_answer() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/slow?s=0.1") + get("/second"))
        client.writer.write_eof()  # as `nc -N` does
        first = await client.reply()
        second = await client.reply()
        assert await client.closed_by_server()
    assert [first.json()["path"], second.json()["path"]] == ["/slow", "/second"]


# -- limits ---------------------------------------------------------------------------------------


async def test_request_line_too_long_is_414() -> None:
    limits = Limits(max_head_bytes=1024, header_timeout=2, idle_timeout=2)
    async with serve(limits) as s, connect(s.port) as client:
        await client.send(get("/" + "a" * 2000))
        reply = await client.reply()
        assert reply.status == 414
        assert "request line" in error_of(reply)["message"]
        assert await client.closed_by_server()
    assert s.handler.seen == []


async def test_headers_too_large_is_431() -> None:
    limits = Limits(max_head_bytes=1024, header_timeout=2, idle_timeout=2)
    many = [f"X-Header-{i}: {'v' * 40}" for i in range(40)]
    async with serve(limits) as s, connect(s.port) as client:
        await client.send(get("/", *many))
        reply = await client.reply()
        assert reply.status == 431
        assert error_of(reply)["reason"] == "Request Header Fields Too Large"
        assert await client.closed_by_server()
    assert s.handler.seen == []


async def test_an_endless_header_line_is_431_before_it_ends() -> None:
    # The parser keeps a header line whole until its end: the limit must hold before that,
    # or a client could fill the daemon's memory with one line, for as long as it likes.
    limits = Limits(max_head_bytes=1024, header_timeout=30, idle_timeout=30)
    async with serve(limits) as s, connect(s.port) as client:
        await client.send(b"GET / HTTP/1.1\r\nX-Endless: " + b"a" * 256 * 1024)
        reply = await client.reply(timeout=5)
        assert reply.status == 431
        assert await client.closed_by_server()


async def test_body_over_the_limit_by_content_length_is_413_before_the_body_is_read() -> None:
    limits = Limits(max_body_bytes=1000, header_timeout=2, idle_timeout=2)
    async with serve(limits) as s, connect(s.port) as client:
        await client.send(get("/", "Content-Length: 1001", method="POST"))  # no body sent
        reply = await client.reply()
        assert reply.status == 413
        assert "1000 bytes" in error_of(reply)["message"]
        assert await client.closed_by_server()
    assert s.handler.seen == []


async def test_413_reaches_a_client_that_sends_its_whole_large_body() -> None:
    # Closing with the body still unread would reset the connection, and the client, still
    # sending, could lose the answer: the server reads on (and drops) what it sends.
    limits = Limits(max_body_bytes=1000, header_timeout=2, idle_timeout=2)
    body = b"x" * (4 * 1024 * 1024)
    async with serve(limits) as s, connect(s.port) as client:
        head = get("/", f"Content-Length: {len(body)}", method="POST")
        await client.send(head + body)
        reply = await client.reply()
        assert reply.status == 413
        assert await client.closed_by_server()


async def test_chunked_body_over_the_limit_is_413() -> None:
    limits = Limits(max_body_bytes=1000, header_timeout=2, idle_timeout=2)
    chunk = b"200\r\n" + b"y" * 0x200 + b"\r\n"  # 512 bytes each
    async with serve(limits) as s, connect(s.port) as client:
        await client.send(get("/", "Transfer-Encoding: chunked", method="POST") + chunk * 3)
        reply = await client.reply()
        assert reply.status == 413
        assert await client.closed_by_server()
    assert s.handler.seen == []


async def test_chunked_body_within_the_limit_is_read_whole() -> None:
    limits = Limits(max_body_bytes=1000, header_timeout=2, idle_timeout=2)
    async with serve(limits) as s, connect(s.port) as client:
        chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        await client.send(get("/", "Transfer-Encoding: chunked", method="POST") + chunks)
        reply = await client.reply()
    assert reply.status == 200
    assert reply.json()["body"] == "hello world"


async def test_malformed_request_is_400_and_the_connection_closes() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(b"NOT HTTP AT ALL\r\n\r\n")
        reply = await client.reply()
        assert reply.status == 400
        assert "malformed" in error_of(reply)["message"]
        assert reply.headers["connection"] == "close"
        assert await client.closed_by_server()
    assert s.handler.seen == []


async def test_a_malformed_request_behind_a_slow_one_is_answered_after_it() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/slow?s=0.2") + b"GARBAGE\r\n\r\n")
        first = await client.reply()
        second = await client.reply()
        assert await client.closed_by_server()
    assert first.status == 200  # the request read before the bad one keeps its own answer
    assert first.json()["path"] == "/slow"
    assert second.status == 400


async def test_protocol_upgrade_is_400_and_the_handler_is_not_called() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/ws", "Connection: Upgrade", "Upgrade: websocket"))
        reply = await client.reply()
        assert reply.status == 400
        assert "upgrade" in error_of(reply)["message"]
        assert await client.closed_by_server()
    assert s.handler.seen == []


# -- deadlines ------------------------------------------------------------------------------------


async def test_half_a_request_then_silence_is_408_after_header_timeout() -> None:
    async with serve() as s, connect(s.port) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await client.send(b"GET /stalled HTTP/1.1\r\nHost: te")
        reply = await client.reply()
        waited = loop.time() - start
        assert reply.status == 408
        assert error_of(reply)["reason"] == "Request Timeout"
        assert await client.closed_by_server()
    assert FAST.header_timeout - 0.05 <= waited < FAST.header_timeout + 1.0
    assert s.handler.seen == []


async def test_a_stalled_request_behind_an_answered_one_is_408() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/first") + b"GET /second HTTP/1.1\r\n")
        assert (await client.reply()).status == 200
        reply = await client.reply()
        assert reply.status == 408
    assert s.handler.paths == ["/first"]


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/once"))
        assert (await client.reply()).status == 200
        idle = await elapsed_until_closed(client)
    assert FAST.idle_timeout - 0.05 <= idle < FAST.idle_timeout + 1.0


async def test_a_connection_that_never_sends_is_closed_after_idle_timeout() -> None:
    async with serve() as s, connect(s.port) as client:
        idle = await elapsed_until_closed(client)
    assert FAST.idle_timeout - 0.05 <= idle < FAST.idle_timeout + 1.0


async def test_a_slow_handler_is_not_cut_by_the_idle_timeout() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get(f"/slow?s={FAST.idle_timeout * 2}"))
        reply = await client.reply()
    assert reply.status == 200


# -- connections ----------------------------------------------------------------------------------


async def test_more_than_max_connections_busy_is_503() -> None:
    limits = Limits(max_connections=2, header_timeout=5, idle_timeout=5)
    async with serve(limits) as s:
        async with connect(s.port) as one, connect(s.port) as two:
            for client in (one, two):  # both being answered: neither gives way
                await client.send(get("/slow?s=1"))
            await until("both requests to be read", lambda: len(s.handler.seen) == 2)
            async with connect(s.port) as third:
                await third.send(get("/third"))
                reply = await third.reply()
                assert reply.status == 503
                assert "too many connections" in error_of(reply)["message"]
                assert await third.closed_by_server()
            for client in (one, two):  # the first two are untouched
                assert (await client.reply()).status == 200
        await until("the server to see both close", lambda: not s.server.connections)
        async with connect(s.port) as again:  # room again once they are gone
            await again.send(get("/again"))
            assert (await again.reply()).status == 200
    assert "/third" not in s.handler.paths


async def test_a_newcomer_takes_the_place_of_the_oldest_idle_connection() -> None:
    """Idle connections held open (the lock-out of issue 16) give way to one that asks."""
    limits = Limits(max_connections=2, header_timeout=5, idle_timeout=5)
    async with serve(limits) as s, connect(s.port) as one, connect(s.port) as two:
        # uvloop's clock moves in milliseconds: without a pause, "one" may not be the older
        await asyncio.sleep(0.01)
        await two.send(get("/two"))
        assert (await two.reply()).status == 200  # now idle, kept alive, but newer
        async with connect(s.port) as third:
            await third.send(get("/third"))
            assert (await third.reply()).status == 200
            assert await one.closed_by_server()  # the oldest that only waited
            await two.send(get("/two-again"))
            assert (await two.reply()).status == 200


async def test_a_client_that_never_reads_its_answers_stops_being_read_then_dropped() -> None:
    # Pipelined requests from a client that never reads must not pile answers up in the
    # daemon's memory: once the answers wait in the socket's buffers, reading stops.
    async def big(request: Request) -> Response:
        return Response(200, b"z" * 64 * 1024, "text/plain")

    limits = Limits(header_timeout=5, idle_timeout=1.5)
    server = HttpServer(big, log=make_logger(stream=io.StringIO()), limits=limits)
    _, port = await server.listen_tcp("127.0.0.1", 0)
    try:
        async with connect(port) as client:
            request = get("/", "X-Pad: " + "p" * 8000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    for _ in range(1000):  # 8 MB of requests, 64 MB of answers
                        await client.send(request)
            await asyncio.sleep(0.2)  # time for the server to read what it will read
            assert buffered_answers(server) < 8 * 1024 * 1024
            # ... and a client that takes nothing for idle_timeout is given up on.
            await until("the server to drop the client", lambda: not server.connections)
            client.writer.transport.abort()  # its own unsent requests would keep it open
    finally:
        await server.close()


def buffered_answers(server: HttpServer) -> int:
    """Bytes of answers the server holds, not yet taken by the kernel."""
    return sum(
        conn.transport.get_write_buffer_size()
        for conn in server.connections
        if conn.transport is not None
    )


# -- handler errors ------------------------------------------------------------------------------


async def test_a_handler_that_raises_is_500_json_and_the_server_goes_on() -> None:
    async with serve() as s:
        async with connect(s.port) as client:
            await client.send(get("/boom"))
            reply = await client.reply()
        assert reply.status == 500
        error = error_of(reply)
        assert error["message"] == "internal error: RuntimeError"
        assert "a bug in a handler" not in reply.body.decode()  # no details to clients
        assert "event=api_handler_failed" in s.log.getvalue()
        assert "a bug in a handler" in s.log.getvalue()  # but in the log
        async with connect(s.port) as client:
            await client.send(get("/fine"))
            assert (await client.reply()).status == 200


async def test_http_error_becomes_its_status_with_a_json_body_and_its_headers() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/teapot"))
        reply = await client.reply()
        await client.send(get("/after"))  # an HttpError does not end the connection
        after = await client.reply()
    assert reply.status == 418
    assert reply.headers["x-tea"] == "earl grey"
    assert error_of(reply) == {
        "status": 418,
        "reason": "I'm a Teapot",
        "message": "short and stout",
    }
    assert after.status == 200


async def test_a_status_without_a_name_is_still_answered() -> None:
    async with serve() as s, connect(s.port) as client:
        await client.send(get("/odd"))
        reply = await client.reply()
        await client.send(get("/after"))
        after = await client.reply()
    assert (reply.status, reply.body) == (299, b"{}")
    assert after.status == 200


async def test_expect_100_continue_gets_continue_then_the_answer() -> None:
    async with serve() as s, connect(s.port) as client:
        head = get("/upload", "Content-Length: 11", "Expect: 100-continue", method="POST")
        await client.send(head)
        interim = await client.reply(head_only=True)
        assert interim.status == 100
        await client.send(b"hello world")
        reply = await client.reply()
    assert reply.status == 200
    assert reply.json()["body"] == "hello world"


async def test_expect_100_continue_with_a_body_over_the_limit_is_413_without_continue() -> None:
    limits = Limits(max_body_bytes=10, header_timeout=2, idle_timeout=2)
    async with serve(limits) as s, connect(s.port) as client:
        head = get("/upload", "Content-Length: 11", "Expect: 100-continue", method="POST")
        await client.send(head)
        reply = await client.reply()
    assert reply.status == 413


# -- Unix socket ----------------------------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets: AF_UNIX paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="healthd-api-", dir="/tmp") as directory:
        yield Path(directory)


async def test_unix_listener_creates_the_socket_0660_and_knows_the_peer(sock_dir: Path) -> None:
    path = sock_dir / "run" / "api.sock"  # a missing parent directory is created
    handler = Echo()
    server = HttpServer(handler, log=make_logger(stream=io.StringIO()), limits=FAST)
    await server.listen_unix(path)
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        client = await Client.unix(path)
        try:
            await client.send(get("/who"))
            reply = await client.reply()
        finally:
            await client.close()
    finally:
        await server.close()
    assert reply.status == 200
    assert reply.json()["unix"] is True
    assert reply.json()["local"] == "unix"
    assert handler.seen[0].peer.uid == os.geteuid()
    assert not path.exists()  # close() removes it


async def test_unix_listener_replaces_a_stale_socket(sock_dir: Path) -> None:
    path = sock_dir / "api.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # bound once, nobody listening any more
        stale.bind(str(path))
    os.chmod(path, 0o777)
    server = HttpServer(Echo(), log=make_logger(stream=io.StringIO()), limits=FAST)
    await server.listen_unix(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660  # a new socket, not the old one
        client = await Client.unix(path)
        try:
            await client.send(get("/new"))
            assert (await client.reply()).status == 200
        finally:
            await client.close()
    finally:
        await server.close()


async def test_unix_listener_refuses_to_remove_a_regular_file(sock_dir: Path) -> None:
    path = sock_dir / "api.sock"
    path.write_text("precious")
    server = HttpServer(Echo(), log=make_logger(stream=io.StringIO()), limits=FAST)
    with pytest.raises(FileExistsError, match="not a socket"):
        await server.listen_unix(path)
    await server.close()
    assert path.read_text() == "precious"


async def test_unix_listener_refuses_a_socket_another_server_listens_on(sock_dir: Path) -> None:
    path = sock_dir / "api.sock"
    first = HttpServer(Echo(), log=make_logger(stream=io.StringIO()), limits=FAST)
    await first.listen_unix(path)
    second = HttpServer(Echo(), log=make_logger(stream=io.StringIO()), limits=FAST)
    try:
        with pytest.raises(FileExistsError, match="in use"):
            await second.listen_unix(path)
        client = await Client.unix(path)  # the first one still has its socket
        try:
            await client.send(get("/first"))
            assert (await client.reply()).status == 200
        finally:
            await client.close()
    finally:
        await second.close()
        await first.close()
