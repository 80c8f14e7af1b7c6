"""A small HTTP/1.1 server for the API, on asyncio protocols and httptools' request parser.

Why not a framework: aiohttp's server alone adds ~17 MB of resident memory to a daemon that
needs ~30 MB for 1,000 workloads, and the API is a dozen JSON routes. httptools (llhttp, the
parser of Node.js, already used by the HTTP check) does the protocol parsing; this module adds
what a daemon facing untrusted clients needs around it, so that no client can disturb
monitoring:

- limits on the request line and headers, the body, connections and pipelined requests,
  each answered with its own status code and a JSON error, never an exception (after the
  answers to the requests read before, and with a lingering close, so that the client gets
  it even while it is still sending);
- deadlines: headers must arrive within ``header_timeout`` of a request's first byte (a slow
  client cannot hold a connection), idle keep-alive connections close after ``idle_timeout``;
- one handler call at a time per connection, in request order; a handler that raises is a
  500 for that request only; a client that does not read its answers is not read from
  either, so that answers cannot pile up in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import httptools

from healthd import __version__
from healthd.logs import Logger


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is asking. ``uid`` is the peer's user id on a Unix socket (SO_PEERCRED)."""

    unix: bool
    host: str = ""
    uid: int | None = None


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer: Peer
    local: str  # which listener: "tcp" or "unix"

    def json(self) -> Any:
        """The body as JSON (None when empty); raises HttpError 400 when it is not JSON."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    # Compact: json's C encoder is used only without indentation, and /v1/status at 5,000
    # workloads takes ~300 ms to indent on the event loop. `jq` is for people.
    body = json.dumps(data, ensure_ascii=False).encode() + b"\n"
    return Response(status, body, headers=headers or [])


def error_response(
    status: int, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    return json_response(
        status,
        {"error": {"status": status, "reason": _phrase(status), "message": message}},
        headers,
    )


class HttpError(Exception):
    """Raised by handlers for an error answer: becomes a JSON error of ``status``."""

    def __init__(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 16 * 1024  # request line and headers
    max_body_bytes: int = 64 * 1024
    max_connections: int = 256
    max_pipelined: int = 16  # requests read ahead of the one being answered
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    linger_timeout: float = 2.0  # reading (and dropping) after a last answer; see _finish


class HttpServer:
    def __init__(self, handler: Handler, *, log: Logger, limits: Limits | None = None) -> None:
        self.handler = handler
        self.log = log
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._socket_paths: list[Path] = []

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port``; returns the address bound (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self, "tcp"), host, port, reuse_address=True
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def listen_unix(self, path: Path, mode: int = 0o660) -> None:
        """Listen on a Unix socket at ``path`` (a stale socket file there is replaced)."""
        _clear_socket_path(path)
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o777 & ~mode)  # created with the mode, never wider for a moment
        try:
            server = await loop.create_unix_server(lambda: _Connection(self, "unix"), str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        self._servers.append(server)
        self._socket_paths.append(path)

    async def close(self) -> None:
        """Stop listening and close every connection (handlers in flight are cancelled)."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self._socket_paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self._servers.clear()
        self._socket_paths.clear()


def _clear_socket_path(path: Path) -> None:
    """Make room for a new socket: remove a stale one; never remove anything else, nor a
    socket another process still listens on (say, a second healthd started by mistake)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        if _listened_on(path):
            raise FileExistsError(f"{path} is in use: another process listens on it")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)


def _listened_on(path: Path) -> bool:
    """Whether a process accepts connections on the socket at ``path``: a stale one refuses."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener with a full backlog says EAGAIN, not wait
        return probe.connect_ex(str(path)) not in (errno.ECONNREFUSED, errno.ENOENT)


_PEERCRED = struct.Struct("3i")
# An unfinished request head is fed to the parser this many bytes at a time (see _feed).
_HEAD_SLICE = 4096


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer, local: str) -> None:
        self.server = server
        self.limits = server.limits
        self.local = local
        self.transport: asyncio.Transport | None = None
        self.peer = Peer(unix=local == "unix")
        self.parser = httptools.HttpRequestParser(self)
        # What to answer, in order: requests, and last a Response when a request broke a limit
        # or could not be read, so that those read before it keep their own answers.
        self.queue: deque[Request | Response] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reading = True  # False once the last request is read: any more bytes are dropped
        self.closing = False  # the last answer is written (or the connection is gone)
        self.client_done = False  # the client shut down its side (EOF)
        self.writable = asyncio.Event()  # cleared while the client does not take its answers
        self.writable.set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.head_fed = 0  # bytes fed to the parser while this head was unfinished
        self.head_done = False
        self.body = bytearray()
        self.in_request = False

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        full = len(self.server.connections) >= self.limits.max_connections
        self.server.connections.add(self)  # even a refused one, until it is closed
        if full:
            self._refuse(503, "too many connections to the API; try again later")
            return
        self.peer = self._identify(transport)
        self._arm(self.limits.idle_timeout)

    def _identify(self, transport: asyncio.Transport) -> Peer:
        if self.local == "unix":
            sock = transport.get_extra_info("socket")
            uid = None
            with contextlib.suppress(OSError, AttributeError, struct.error):
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                uid = _PEERCRED.unpack(raw)[1]
            return Peer(unix=True, uid=uid)
        peername = transport.get_extra_info("peername")
        host = str(peername[0]) if peername else ""
        return Peer(unix=False, host=host)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.reading = False
        self.server.connections.discard(self)
        self._disarm()
        if self.worker is not None:
            self.worker.cancel()

    def eof_received(self) -> bool:
        # The client has sent all it will send: answer what it asked, then close.
        self.client_done = True
        self.reading = False
        # False: the transport closes now; True: it stays open for the answers still due.
        return not self.closing and (self.worker is not None or bool(self.queue))

    def pause_writing(self) -> None:
        # Answers wait in the transport's buffer: answer no more (and, as requests queue up,
        # read no more) until the client takes them, or they would pile up in memory.
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def abort(self) -> None:
        self.closing = True
        self.reading = False
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.reading:
            return  # after the last request, or lingering (see _finish)
        try:
            self._feed(data)
        except _Refused as exc:
            self._refuse(exc.status, exc.message)
        except httptools.HttpParserUpgrade:
            # The upgrade request is complete and queued, not yet started: it is not answered.
            if self.queue and isinstance(self.queue[-1], Request):
                self.queue.pop()
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)

    def _parse_failed(self, exc: Exception) -> None:
        if not self.reading:
            return  # bytes after a "Connection: close" request: it is answered, they are not
        # A limit raised inside a callback arrives wrapped, as the error's context.
        refused = exc.__context__
        if isinstance(refused, _Refused):
            self._refuse(refused.status, refused.message)
        else:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _feed(self, data: bytes) -> None:
        """Feed ``data`` to the parser, an unfinished head in slices with its size checked
        between them: httptools holds a header line whole until it ends, so ``on_header``
        alone could not stop a line that never ends from filling the memory."""
        view = memoryview(data)
        while view and self.reading:
            if self.head_done:  # a body (on_body counts it), and whatever follows it
                self.parser.feed_data(view)
                return
            piece, view = view[:_HEAD_SLICE], view[_HEAD_SLICE:]
            self.parser.feed_data(piece)
            if self.in_request and not self.head_done:
                # The slice a request begins in counts whole: at most a slice too many.
                self.head_fed += len(piece)
                if self.head_fed > self.limits.max_head_bytes + _HEAD_SLICE:
                    raise _Refused(431, "the request headers are too large")

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url), 414, "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 431, "the request headers are too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.head_done = True
        length = self.headers.get("content-length", "0")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise self._body_too_large()
        # Not while earlier requests wait for their answers: those must come first. A client
        # that pipelines behind "Expect" sends its body after its own wait instead.
        expect = self.headers.get("expect", "").lower() == "100-continue"
        if expect and self.transport and not self.queue and self.worker is None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > self.limits.max_body_bytes:
            raise self._body_too_large()

    def on_message_complete(self) -> None:
        self._disarm()
        raw_path, _, raw_query = self.url.decode("latin-1").partition("?")
        request = Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            path=unquote(raw_path),
            query=parse_qs(raw_query, keep_blank_values=True),
            headers=self.headers,
            body=bytes(self.body),
            peer=self.peer,
            local=self.local,
        )
        keep_alive = self.parser.should_keep_alive()
        self._reset()
        self.queue.append(request)
        if not keep_alive:
            request.headers["connection"] = "close"
            self._stop_reading()  # nothing after the last request is read
        elif len(self.queue) >= self.limits.max_pipelined and self.transport is not None:
            self.transport.pause_reading()
        self._start_worker()

    def _body_too_large(self) -> _Refused:
        return _Refused(413, f"the request body is larger than {self.limits.max_body_bytes} bytes")

    def _count(self, n: int, status: int, message: str) -> None:
        self.head_bytes += n
        if self.head_bytes > self.limits.max_head_bytes:
            raise _Refused(status, message)

    # -- answering -------------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.queue and not self.closing:
                if not await self._writable():
                    return
                item = self.queue.popleft()
                if isinstance(item, Response):  # refused: the connection's last answer
                    self._write("GET", item, close=True)
                    return
                response = await self._answer(item)
                close = item.headers.get("connection", "").lower() == "close"
                self._write(item.method, response, close)
                if close:
                    return
                self._read_on()
        finally:
            self.worker = None
            self._after_answers()

    async def _writable(self) -> bool:
        """Wait while the client does not take its answers; after ``idle_timeout`` of that,
        give up on it (False): it would hold a connection and its answers for ever."""
        if self.writable.is_set():
            return True
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                await self.writable.wait()
        except TimeoutError:
            self.abort()
            return False
        return True

    def _after_answers(self) -> None:
        if self.closing or self.queue:
            return
        if self.client_done and self.transport is not None:
            self.closing = True
            self.transport.close()
        elif not self.in_request:
            self._arm(self.limits.idle_timeout)

    def _read_on(self) -> None:
        ready = self.reading and len(self.queue) < self.limits.max_pipelined
        if ready and self.transport is not None:
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self.reading = False
        self.in_request = False
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` after the requests read before, then close: read nothing more."""
        self._stop_reading()
        self.queue.append(error_response(status, message))
        self._start_worker()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self.server.handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler's bug answers 500 and stops nothing else
            self.server.log.error(
                "api_handler_failed", method=request.method, path=request.path, error=repr(exc)
            )
            return error_response(500, f"internal error: {type(exc).__name__}")

    def _write(self, method: str, response: Response, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [
            f"HTTP/1.1 {response.status} {_phrase(response.status)}",
            f"Server: healthd/{__version__}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head if method == "HEAD" else head + response.body)
        if close:
            self._finish()

    def _finish(self) -> None:
        """Close after the last answer, gently: closing with bytes unread resets the connection,
        and a client still sending (a body over the limit, say) could lose the answer. So shut
        down writing, then read and drop what comes until the client closes too, or until
        ``linger_timeout``."""
        assert self.transport is not None
        self.closing = True
        self.reading = False
        if self.client_done or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # after what is buffered
        self.transport.resume_reading()
        self._arm(self.limits.linger_timeout)

    # -- deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.closing:  # lingered long enough
            self._close_now()
        elif self.in_request:
            self._refuse(408, "the request took too long to arrive")
        elif self.worker is None and not self.queue:  # idle keep-alive connection
            self._close_now()

    def _close_now(self) -> None:
        """Close at the end of a deadline. An answer the client has still not taken is
        dropped: close() would wait for it to be sent, for ever if the client never reads."""
        assert self.transport is not None
        self.closing = True
        self.reading = False
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status without a name is still a status
        return ""


class _Refused(Exception):
    """Raised inside parser callbacks to stop reading a request that breaks a limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
