"""http: ``GET http://ADDRESS:PORT/TARGET``; healthy on a status of 200-399.

Redirects are not followed (a 3xx is healthy, as its status says the server answers). The
response is parsed with httptools on a plain asyncio protocol, with no client, pool or session
objects. Headers are capped at 64 KiB and the body read at 10 KiB. The status decides: a body
that is cut by a reset or stalls past the deadline after the headers came does not change it.

Each workload keeps its HTTP/1.1 connection open between checks when the server allows it and
the interval is short enough for the connection to be worth keeping: a check is then one write
and one read, instead of a connect, an accept and a close on both ends. A kept connection that
the server closed while we were sending (its idle timeout racing our request) is not a failure
of the workload: the request is sent once more on a fresh connection, within the same deadline.
Anything else that goes wrong closes the connection, so the next check starts afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import httptools

from healthd import __version__
from healthd.checks.probe import Probe, connect_error, host_port

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

MAX_HEADER_BYTES = 64 * 1024
HEADERS_TOO_LARGE = f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB"
MAX_BODY_BYTES = 10 * 1024
ERROR_BODY_CHARS = 200
# Connections of workloads checked less often than this are closed after each check: servers
# drop idle connections after 5-75 s, so keeping them would mostly mean reconnecting anyway.
KEEPALIVE_MAX_INTERVAL = 30.0


def check_url(cfg: WorkloadConfig, address: str) -> str:
    return f"http://{host_port(address, cfg.port)}{cfg.target}"


class _Connection(asyncio.Protocol):
    """One TCP connection of a probe; forwards everything to it."""

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

    def data_received(self, data: bytes) -> None:
        self.probe._on_data(self, data)

    def eof_received(self) -> bool:
        return False  # the server is done with us: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.probe._on_lost(self, exc)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class HttpProbe(Probe):
    __slots__ = (
        "_body",
        "_conn",
        "_got_data",
        "_header_bytes",
        "_opening",
        "_parser",
        "_raw_header_bytes",
        "_request",
        "_request_for",
        "_reused",
        "_status",
        "_url",
        "keepalive",
    )

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self.keepalive = cfg.interval <= KEEPALIVE_MAX_INTERVAL
        self._conn: _Connection | None = None
        self._opening: asyncio.Task[None] | None = None
        self._request = b""
        self._request_for: str | None = None
        self._url = ""
        # the exchange in flight
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._header_bytes = 0  # complete headers, counted by on_header
        self._raw_header_bytes = 0  # bytes read before the headers completed
        self._body = bytearray()
        self._reused = False
        self._got_data = False

    def describe(self) -> str:
        return f"GET {self._url}"

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
            self._complete(keep=False)
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
        connection = "" if self.keepalive else "Connection: close\r\n"
        self._request = (
            f"GET {self.cfg.target} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: healthd/{__version__}\r\nAccept: */*\r\n{connection}\r\n"
        ).encode("ascii")
        self._request_for = address

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drop_connection()
        self._opening = loop.create_task(self._connect(loop))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self.address, self.cfg.port
            )
        except (OSError, UnicodeError) as exc:
            self._opening = None
            self._fail(connect_error(exc))
            return
        self._opening = None
        if self._done is None:  # finished meanwhile (cannot normally happen: we are cancelled)
            conn.close()
            return
        self._conn = conn
        self._send(conn, reused=False)

    def _send(self, conn: _Connection, *, reused: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._body.clear()
        self._reused = reused
        self._got_data = False
        assert conn.transport is not None
        conn.transport.write(self._request)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _on_data(self, conn: _Connection, data: bytes) -> None:
        parser = self._parser
        if conn is not self._conn or parser is None:
            conn.close()  # nothing was asked: a server talking out of turn is not reused
            if conn is self._conn:
                self._conn = None
            return
        self._got_data = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._parser is parser:
                self._fail(f"malformed HTTP response: {exc}", close=True)
            return
        if self._parser is parser and not self._status:
            # No status yet, so everything read so far is header: this catches a header line
            # that never ends, which on_header (called per complete header) cannot see.
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > MAX_HEADER_BYTES:
                self._fail(HEADERS_TOO_LARGE, close=True)

    def _on_lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._parser is None:
            return  # an idle connection the server closed: the next check opens another
        if self._status:  # body delimited by the close
            self._complete(keep=False)
        elif self._reused and not self._got_data:
            self._parser = None
            assert self._loop is not None
            self._open(self._loop)
        elif exc is not None:
            self._fail(f"connection lost: {connect_error(exc)}")  # not "[Errno 104] ..."
        else:
            self._fail("connection closed before a response")

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parser is None:
            return
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(HEADERS_TOO_LARGE, close=True)

    def on_headers_complete(self) -> None:
        if self._parser is not None:
            self._status = self._parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        if self._parser is None:
            return
        room = MAX_BODY_BYTES - len(self._body)
        self._body += chunk[:room]
        if len(chunk) >= room:
            self._complete(keep=False)  # enough: the status is what decides; rest unread

    def on_message_complete(self) -> None:
        parser = self._parser
        if parser is not None:
            self._complete(keep=self.keepalive and parser.should_keep_alive())

    # -- outcomes ---------------------------------------------------------------------------

    def _complete(self, *, keep: bool) -> None:
        self._parser = None
        if not keep:
            self._drop_connection()
        status = self._status
        if 200 <= status < 400:
            self._finish(True)
            return
        text = " ".join(self._body.decode("utf-8", "replace").split())
        snippet = f": {text[:ERROR_BODY_CHARS]}" if text else ""
        self._finish(False, f"HTTP {status} from {self._url}{snippet}")

    def _fail(self, reason: str, *, close: bool = False) -> None:
        self._parser = None
        if close:
            self._drop_connection()
        self._finish(False, f"HTTP check failed: {self._url}: {reason}")


class HttpCheck:
    name = "http"
    needs_address = True
    default_target = "/healthz"
    default_port = 8080

    def fill_defaults(self, cfg: WorkloadConfig) -> WorkloadConfig:
        return replace(
            cfg, target=cfg.target or self.default_target, port=cfg.port or self.default_port
        )

    def validate(self, cfg: WorkloadConfig) -> Iterable[tuple[str, str]]:
        target = cfg.target
        if target and not target.startswith("/"):
            yield "target", f"must be a URL path starting with '/', got {target!r}"
        elif target and not all("!" <= c <= "~" for c in target):
            yield "target", "must be printable ASCII without spaces (percent-encode the rest)"

    @staticmethod
    def describe(cfg: WorkloadConfig, address: str) -> str:
        return f"GET {check_url(cfg, address)}"

    def probe(self, cfg: WorkloadConfig) -> HttpProbe:
        return HttpProbe(cfg)
