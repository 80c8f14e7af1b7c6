"""One client connection of the API's HTTP server: parsing, limits, deadlines, answers.

See ``http.py`` for what it guarantees; this is how.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, unquote

import httptools

from healthd import __version__
from healthd.api.hosts import BadHost, split_host
from healthd.api.messages import HttpError, Peer, Request, Response, error_response, phrase
from healthd.api.peer_uid import loopback_peer_uid
from healthd.api.sendqueue import StallWatch, bound_buffers, drop

if TYPE_CHECKING:
    from healthd.api.http import HttpServer


_PEERCRED = struct.Struct("3i")
# An unfinished request head is fed to the parser this many bytes at a time (see _feed).
_HEAD_SLICE = 4096


class Connection(asyncio.Protocol):
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
        self.streaming = False  # a streamed answer is being written
        self.writable = asyncio.Event()  # cleared while the client does not take its answers
        self.writable.set()
        self.counted = False  # in the server's budget (refused ones are not)
        # since when it waits for its client; not loop.time(): uvloop's counts whole
        # milliseconds, and two connections' waits must not tie when the oldest is chosen
        self.waiting_at = time.monotonic()
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
        self.peer = self._identify(transport)
        others = list(self.server.connections)  # the ones that may give way to this one
        self.server.connections.add(self)  # even a refused one, until it is closed
        refusal = self.server.budget.admit(self.local, self.peer, lambda: others)
        if refusal is not None:
            self.server.refusing += 1
            if self.server.refusing > self.limits.max_refused:
                self.abort()  # a flood: no answer, no linger, no memory
                return
            self._refuse(503, f"{refusal.message}; try again later")
            return
        self.counted = True
        self._arm(self.limits.idle_timeout)

    def _identify(self, transport: asyncio.Transport) -> Peer:
        if self.local == "unix":
            sock = transport.get_extra_info("socket")
            uid = None
            with contextlib.suppress(OSError, AttributeError, struct.error):
                raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                uid = _PEERCRED.unpack(raw)[1]
            return Peer(unix=True, uid=uid, uid_source="SO_PEERCRED" if uid is not None else None)
        peername = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        host = str(peername[0]) if peername else ""
        # A local client's uid, so that budgets tell local users apart (budget.py)
        uid = None
        if peername and sockname:
            uid = loopback_peer_uid((str(sockname[0]), sockname[1]), (host, peername[1]))
        return Peer(
            unix=False, host=host, uid=uid, uid_source="sock_diag" if uid is not None else None
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.reading = False
        self.server.connections.discard(self)
        if self.counted:
            self._uncount()
        elif self.transport is not None:
            self.server.refusing -= 1
        self._disarm()
        if self.worker is not None:
            self.worker.cancel()

    def eof_received(self) -> bool:
        # The client has sent all it will send: answer what it asked, then close.
        self.client_done = True
        self.reading = False
        if self.streaming:
            return False  # an endless answer: the client's EOF is the only sign it has gone
        # False: the transport closes now; True: it stays open for the answers still due.
        return not self.closing and (self.worker is not None or bool(self.queue))

    def pause_writing(self) -> None:
        # Answers wait in the transport's buffer: answer no more (and, as requests queue up,
        # read no more) until the client takes them, or they would pile up in memory.
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _uncount(self) -> None:
        self.counted = False
        self.server.budget.release(self.local, self.peer)

    def waiting_since(self) -> float | None:
        """When it began to wait for its client (connected, kept alive, or receiving a head);
        None while a request is answered or a stream sent, or once it closes."""
        if self.closing or self.worker is not None or self.queue or self.streaming:
            return None
        return self.waiting_at

    def give_way(self) -> None:
        """Close a connection that only waits, for a newcomer (see budget.py): its place is
        free at once, not when the loop gets to ``connection_lost``."""
        if self.counted:
            self._uncount()
            self.server.refusing += 1  # connection_lost counts it out as a refused one
        self.abort()

    def abort(self) -> None:
        self.closing = True
        self.reading = False
        if self.transport is not None:
            self.transport.abort()

    def drop(self) -> None:
        """Give up on a client that takes nothing of what it is sent: reset the connection,
        so that what it has not taken is freed now (a close would leave it queued)."""
        self.closing = True
        self.reading = False
        if self.transport is not None:
            drop(self.transport)

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
            # %2F stays as sent: an encoded slash is data, not a separator, so
            # "/-%2Freload" or "/v1/workloads%2Fweb%2Fpause" name no route (RFC 3986)
            path=unquote(raw_path.replace("%2F", "%252F").replace("%2f", "%252f")),
            query=parse_qs(raw_query, keep_blank_values=True),
            headers=self.headers,
            body=bytes(self.body),
            peer=self.peer,
            local=self.local,
            http_version=self.parser.get_http_version(),
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
                if response.stream is not None:
                    if not await self._send_stream(item, response, close):
                        return
                else:
                    self._write(item.method, response, close)
                    if close:
                        return
                self._read_on()
        finally:
            self.worker = None
            self._after_answers()

    async def _writable(self, deadline: bool = True) -> bool:
        """Wait while the client does not take its answers; after ``idle_timeout`` of that,
        give up on it (False): it would hold a connection and its answers for ever. Without
        ``deadline`` (a stream, whose StallWatch drops a client that takes nothing) the wait
        ends with the connection."""
        if self.writable.is_set():
            return True
        if not deadline:
            await self.writable.wait()
            return not self.closing
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                await self.writable.wait()
        except TimeoutError:
            self.drop()
            return False
        return True

    def _after_answers(self) -> None:
        if self.closing or self.queue:
            return
        if self.client_done and self.transport is not None:
            self.closing = True
            self.transport.close()
        elif not self.in_request:
            self.waiting_at = time.monotonic()
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
        refused = self._misdirected(request)
        if refused is not None:
            return refused
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

    def _misdirected(self, request: Request) -> Response | None:
        """The answer to a request on the TCP listener whose Host is not this server (see
        hosts.py), or None. The Host is never quoted back: anyone could have written it."""
        rule, value = self.server.hosts, request.headers.get("host")
        if rule is None or self.local != "tcp" or value is None:
            return None
        try:
            host = split_host(value)
        except BadHost as exc:
            return error_response(400, f"the Host header is malformed: {exc}")
        if rule.allows(host):
            return None
        self.server.misdirected(host, self.peer)
        return error_response(
            421,
            "this daemon does not answer to that Host (a guard against DNS rebinding); "
            "use 127.0.0.1, localhost or the listen address, or add the name to "
            "api.allowed_hosts",
        )

    def _write(self, method: str, response: Response, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = _head(response, f"Content-Length: {len(response.body)}", close)
        self.transport.write(head if method == "HEAD" else head + response.body)
        if close:
            self._finish()

    async def _send_stream(self, request: Request, response: Response, close: bool) -> bool:
        """Write a streamed answer: the head, then each piece the stream yields, as it comes:
        chunks on HTTP/1.1; on HTTP/1.0 the bare bytes, ended by closing. True when the
        stream has ended and the connection goes on.

        - Flow control: the next piece is asked for only once the client takes what was sent
          (``_writable``), so what waits in memory is the stream's to bound. The socket's
          send buffer is bounded too, and a client that takes none of the bytes sent to it
          for ``idle_timeout`` is dropped, however few they are (see sendqueue.py).
        - No idle timeout while streaming: the answer is in progress, however quiet.
        - A client that goes (or shuts down its sending side: for an endless answer the only
          sign that it has gone) ends the stream at once, and so does ``HttpServer.close``:
          the worker is cancelled and the stream closed, so its cleanup runs.
        - A stream that raises is cut off (abort): after the head no error status can be
          sent, and a chunked body without its last chunk tells the client it is incomplete.
        """
        stream = response.stream
        assert stream is not None
        chunked = request.http_version != "1.0"
        close = close or not chunked or self.client_done
        framing = "Transfer-Encoding: chunked" if chunked else ""
        watch: StallWatch | None = None
        try:
            if self.transport is None or self.transport.is_closing():
                return False
            self.streaming = request.method != "HEAD" and not self.client_done
            if self.streaming:
                limits = self.limits
                bound_buffers(
                    self.transport,
                    limits.stream_send_buffer,
                    limits.stream_write_high_water,
                    limits.idle_timeout,
                )
                watch = StallWatch(
                    self.transport, limits.idle_timeout, limits.stall_check_interval, self.drop
                )
            self._send(_head(response, framing, close), watch)
            while self.streaming:
                # No deadline of its own: the transport's buffer drains only as the kernel's
                # does, which on a Unix socket can take a slow reader longer than it takes
                # the watch to see that it reads.
                if not await self._writable(deadline=watch is None):
                    return False
                try:
                    piece = await anext(stream)
                except StopAsyncIteration:
                    break
                if self.closing or self.transport.is_closing():
                    return False
                if piece:  # an empty chunk would end the body
                    self._send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece, watch)
        except Exception as exc:
            self.server.log.error(
                "api_stream_failed", method=request.method, path=request.path, error=repr(exc)
            )
            self.abort()
            return False
        finally:
            self.streaming = False
            if watch is not None:
                watch.stop()
            await stream.aclose()  # a stream suspended at a yield runs its cleanup now
        if self.closing or self.transport is None or self.transport.is_closing():
            return False
        if chunked and request.method != "HEAD":
            self.transport.write(b"0\r\n\r\n")
        if close:
            self._finish()
            return False
        return True

    def _send(self, data: bytes, watch: StallWatch | None) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if watch is not None:
            watch.wrote(len(data))

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


def _head(response: Response, framing: str, close: bool) -> bytes:
    """The status line and headers; ``framing`` says where the body ends (a Content-Length,
    chunked, or nothing: at the close)."""
    lines = [
        f"HTTP/1.1 {response.status} {phrase(response.status)}",
        f"Server: healthd/{__version__}",
        f"Content-Type: {response.content_type}",
        *([framing] if framing else []),
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Refused(Exception):
    """Raised inside parser callbacks to stop reading a request that breaks a limit."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
