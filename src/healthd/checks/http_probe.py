"""HttpProbe: one HTTP/1.1 exchange per check on a raw asyncio protocol, the status deciding.

The response is parsed with httptools on a plain asyncio protocol, with no client, pool or
session objects. Headers are capped at 64 KiB and the body read at 10 KiB. The status decides
(200-399): a body that is cut by a reset or stalls past the deadline after the headers came
does not change it.

Every check opens a new connection, sends ``Connection: close`` and closes the connection
when the answer is in: what a check reports is what the next new client of the server would
get. A server whose accept path died (out of descriptors, a dead acceptor thread) while it
still answers the connections it holds is seen as the failure it is for every new client.
Connections are closed with SO_LINGER 0, a reset, so that thousands of checks a second leave
no connection in TIME-WAIT on either end (docs/CHECKS.md has the measurements).

``keep_alive: true`` keeps the connection between checks instead, when the server allows it
and the interval is short enough for the connection to be worth keeping: a check is then one
write and one read, at the price of not seeing the accept path. A kept connection that the
server closed while we were sending (its idle timeout racing our request) is not a failure
of the workload: the request is sent once more on a fresh connection, within the same
deadline. Anything else that goes wrong closes the connection, so the next check starts afresh.

This is the hot path, and it stays what it was: options that change how a response is judged
(``expected_status``, body matchers, redirects, HEAD) are ``http_judge.py``'s, in a subclass
only their workloads use; TLS is ``https.py``'s. A method or headers only change the request,
which is encoded once per address (``http_options.RequestOptions``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from healthd.checks.http_options import RequestOptions
from healthd.checks.http_socket import RESET_ON_CLOSE, SocketConnection
from healthd.checks.probe import Probe, connect_error, host_port, numeric_family

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

MAX_HEADER_BYTES = 64 * 1024
HEADERS_TOO_LARGE = f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB"
MAX_BODY_BYTES = 10 * 1024
ERROR_BODY_CHARS = 200
# With keep_alive, connections of workloads checked less often than this are closed after each
# check all the same: servers drop idle connections after 5-75 s, so keeping them would mostly
# mean reconnecting anyway.
KEEPALIVE_MAX_INTERVAL = 30.0


def check_url(cfg: WorkloadConfig, address: str) -> str:
    return f"{cfg.scheme or 'http'}://{host_port(address, cfg.port)}{cfg.target}"


class Connection(Protocol):
    """What a probe uses of its connection: a transport's (HttpConnection), or a bare
    socket's (http_socket.SocketConnection)."""

    closed: bool

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class HttpConnection(asyncio.Protocol):
    """One TCP (or TLS) connection of a probe, through the loop's transport (TLS, host names);
    forwards everything to the probe."""

    __slots__ = (
        "closed",
        "probe",
        "transport",
    )

    def __init__(self, probe: HttpProbe) -> None:
        self.probe = probe
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: close() resets the connection instead of the FIN handshake, so
            # neither end holds it in TIME-WAIT (60 s on Linux, a port on the checking side)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)

    def data_received(self, data: bytes) -> None:
        self.probe._on_data(self, data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # the server is done with us: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.probe._on_lost(self, exc)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            # At once, with no TLS close_notify exchange: the exchange is over (or abandoned),
            # and a graceful TLS shutdown would hold the socket until the server answers it.
            self.transport.abort()


class HttpProbe(Probe):
    __slots__ = (
        "_body",
        "_chunked",
        "_conn",
        "_got_data",
        "_header_bytes",
        "_length",
        "_location",
        "_now_request",
        "_now_url",
        "_opening",
        "_opts",
        "_origins",
        "_parser",
        "_raw_header_bytes",
        "_received",
        "_redirects",
        "_request",
        "_request_for",
        "_reused",
        "_status",
        "_url",
        "keepalive",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self.keepalive = bool(cfg.keep_alive) and cfg.interval <= KEEPALIVE_MAX_INTERVAL
        self._opts = RequestOptions.of(cfg)
        self._conn: Connection | None = None
        # what is connecting: the loop's create_connection in a task, or a bare socket's
        self._opening: asyncio.Task[None] | SocketConnection | None = None
        self._request = b""
        self._request_for: str | None = None
        self._url = ""
        # the exchange in flight: its request and URL are others after a redirect
        self._now_request = b""
        self._now_url = ""
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._header_bytes = 0  # complete headers, counted by on_header
        self._raw_header_bytes = 0  # bytes read before the headers completed
        self._body = bytearray()
        # the framing of the response's body, to tell a body that ended from one cut short
        self._length = -1  # Content-Length; -1: none
        self._chunked = False
        self._received = 0  # body bytes that came, read or not
        self._reused = False
        self._got_data = False
        # for follow_redirects (http_judge.py): slots live here, where the layout is
        self._location: bytes | None = None
        self._redirects = 0
        self._origins: frozenset[tuple[str, str, int]] = frozenset()

    def describe(self) -> str:
        return f"{self._opts.method} {self._url}"

    # -- Probe ----------------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._request_for != self.address:
            self._prepare(self.address)
        conn = self._conn
        if conn is not None and not conn.closed:
            self._send(conn, reused=True)
        else:
            self._open(loop)

    def _on_deadline(self) -> None:
        if self._parser is not None and self._status:
            # The status and headers came in time and the body did not finish: the status
            # decides, as it does for a body past the read cap (and as the reference, which
            # never reads the body, would say); what came of the body is the error's snippet.
            self._complete(keep=False, cut=f"body unfinished at the deadline: {self._shortfall()}")
            return
        super()._on_deadline()

    def _abort(self) -> None:
        self._parser = None
        self._drop_connection()
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None

    def close(self) -> None:
        super().close()
        self._drop_connection()

    # -- connection -----------------------------------------------------------------------

    def _prepare(self, address: str) -> None:
        self._drop_connection()  # the workload moved: never reuse a connection to the old one
        authority = host_port(address, self.cfg.port)
        self._url = check_url(self.cfg, address)
        opts = self._opts
        self._request = self._encode(opts.method, self.cfg.target, opts.host_header or authority)
        self._request_for = address
        self._now_request, self._now_url = self._request, self._url

    def _encode(self, method: str, target: str, host: str) -> bytes:
        connection = "" if self.keepalive else "Connection: close\r\n"
        return (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            f"{self._opts.extra_headers}{connection}\r\n"
        ).encode("ascii")

    # IP addresses over plain TCP are connected on a bare socket (http_socket.py); TLS and
    # host names through the loop's create_connection
    _bare_sockets = True

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drop_connection()
        family = numeric_family(self.address) if self._bare_sockets else None
        if family is None:
            self._opening = loop.create_task(self._connect(loop))
            return
        opened = SocketConnection.open(self, loop, family, (self.address, self.cfg.port))
        if isinstance(opened, int):
            self._connect_failed(opened)
        elif not opened.closed and self._conn is not opened:  # connecting still
            self._opening = opened

    def _connect_failed(self, err: int) -> None:
        self._opening = None
        self._fail(os.strerror(err).lower())  # as connect_error words it

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, conn = await loop.create_connection(
                lambda: HttpConnection(self), self.address, self.cfg.port
            )
        except (OSError, UnicodeError) as exc:
            self._opening = None
            self._fail(self._reason(exc))
            return
        self._connected(conn)

    def _connected(self, conn: Connection) -> None:
        self._opening = None
        if self._done is None:  # finished meanwhile (cannot normally happen: we are cancelled)
            conn.close()
            return
        self._conn = conn
        self._send(conn, reused=False)

    def _reason(self, exc: Exception) -> str:
        return connect_error(exc)

    def _send(self, conn: Connection, *, reused: bool) -> None:
        parser = self._parser = httptools.HttpResponseParser(self)
        # A bare LF ends the status line and header lines, as curl and Go read them (RFC 9112
        # 2.2 allows it): a server that writes "\n" answers every client that way.
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._status = 0
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._new_message()
        self._reused = reused
        self._got_data = False
        conn.write(self._now_request)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _on_data(self, conn: Connection, data: bytes) -> None:
        parser = self._parser
        if conn is not self._conn or parser is None:
            conn.close()  # nothing was asked: a server talking out of turn is not reused
            if conn is self._conn:
                self._conn = None
            return
        self._got_data = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._parser is parser:
                self._fail(f"malformed HTTP response: {exc}", close=True)
            return
        if self._parser is parser and not self._status:
            # No status yet, so everything read so far is header: this catches a header line
            # that never ends, which on_header (called per complete header) cannot see.
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > MAX_HEADER_BYTES:
                self._fail(HEADERS_TOO_LARGE, close=True)

    def _on_lost(self, conn: Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._parser is None:
            return  # an idle connection the server closed: the next check opens another
        if self._status:  # the body ends here: at its end if the close delimits it
            if exc is not None:
                reason = self._reason(exc)
                if self._opts.reads_body:
                    # a body cut by a reset cannot be judged: what came may lack the match
                    self._fail(f"connection lost while reading the body: {reason}")
                    return
                self._complete(keep=False, cut=f"body cut by {reason}: {self._shortfall()}")
                return
            missing = self._missing()
            self._complete(keep=False, cut=f"body truncated: {missing}" if missing else "")
        elif self._reused and not self._got_data:
            self._parser = None
            assert self._loop is not None
            self._open(self._loop)
        elif exc is not None:
            self._fail(f"connection lost: {self._reason(exc)}")  # not "[Errno 104] ..."
        else:
            self._fail(self._closed_early())

    def _closed_early(self) -> str:
        return "connection closed before a response"

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parser is None:
            return
        # counted over interim responses too: an endless stream of them is capped as well
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(HEADERS_TOO_LARGE, close=True)
            return
        size = len(name)  # compared first: most headers are neither of these
        if size == 14 and name.lower() == b"content-length":
            self._length = int(value) if value.isdigit() else -1  # llhttp refuses a bad one
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        if self._parser is not None:
            self._status = self._parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        if self._parser is None:
            return
        self._received += len(chunk)
        room = MAX_BODY_BYTES - len(self._body)
        self._body += chunk[:room]
        if len(chunk) >= room:
            self._complete(keep=False)  # enough: what decides is in hand; the rest unread

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser is None:
            return
        if self._status < 200:
            self._interim(self._status)
            return
        self._complete(keep=self.keepalive and parser.should_keep_alive())

    def _interim(self, status: int) -> None:
        """A 1xx response came before the final one (RFC 9110 15.2)."""
        if status == 101:
            # nothing asked to switch protocols (Upgrade is healthd's, never sent): what
            # follows is not HTTP, and a new client that did not ask would not get an answer
            self._fail(
                "the server answered 101 Switching Protocols to a request that did not ask "
                "to switch protocols",
                close=True,
            )
            return
        # 100 Continue, 103 Early Hints, ...: read past, as curl and Go do; the final
        # response follows on the same connection (httptools parses it as the next message)
        self._status = 0
        self._new_message()

    def _new_message(self) -> None:
        self._body.clear()
        self._length = -1
        self._chunked = False
        self._received = 0

    def _missing(self) -> str:
        """What a body that ended here lacks ("12 of 100 bytes"), or "" if the close was its
        end (no Content-Length, not chunked: RFC 9112 6.3)."""
        if self._chunked:
            return f"{self._received} bytes of a chunked body, without its last chunk"
        if self._length >= 0:
            return f"{self._received} of {self._length} bytes"
        return ""

    def _shortfall(self) -> str:
        return self._missing() or f"{self._received} bytes"

    # -- outcomes ---------------------------------------------------------------------------

    def _complete(self, *, keep: bool, cut: str = "") -> None:
        """The response is in, as far as it will come; ``cut`` says what of its body did not
        (a note on a healthy result: the status decides)."""
        self._parser = None
        if not keep:
            self._drop_connection()
        status = self._status
        if 200 <= status < 400:
            self._finish(True, note=cut)
            return
        self._finish(False, f"HTTP {status} from {self._now_url}{self._snippet()}")

    def _snippet(self) -> str:
        """ ": the start of the body" for an error, or nothing for an empty body."""
        text = " ".join(self._body.decode("utf-8", "replace").split())
        return f": {text[:ERROR_BODY_CHARS]}" if text else ""

    def _fail(self, reason: str, *, close: bool = False) -> None:
        self._parser = None
        if close:
            self._drop_connection()
        self._finish(False, f"HTTP check failed: {self._now_url}: {reason}")
