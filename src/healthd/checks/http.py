"""http: ``GET http://ADDRESS:PORT/TARGET``; healthy on a status of 200-399.

Redirects are not followed (a 3xx is healthy, as its status says the server answers). The
response is parsed with httptools on a plain asyncio protocol: one small object per check, no
client, pool or session. Headers are capped at 64 KiB and the body read at 10 KiB.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import httptools

from healthd import __version__
from healthd.checks.tcp import connect_error, host_port
from healthd.model import CheckResult

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 10 * 1024
ERROR_BODY_CHARS = 200


class _HttpFailure(Exception):
    pass


class _Exchange(asyncio.Protocol):
    """Send one request, parse one response; ``done`` resolves to (status, body head)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.header_bytes = 0  # complete headers, counted by on_header
        self.raw_header_bytes = 0  # bytes read before the status line and headers completed
        self.body = bytearray()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP response: {exc}")
            return
        if not self.status:
            # No status yet, so everything read so far is header: this catches a header line
            # that never ends, which on_header (called per complete header) cannot see.
            self.raw_header_bytes += len(data)
            if self.raw_header_bytes > MAX_HEADER_BYTES:
                self._fail(f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.status:  # body delimited by the close
            self._finish()
        elif exc is not None:
            self._fail(f"connection lost: {exc}")
        else:
            self._fail("connection closed before a response")

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            self._fail(f"response headers larger than {MAX_HEADER_BYTES // 1024} KiB")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        room = MAX_BODY_BYTES - len(self.body)
        self.body += chunk[:room]
        if len(chunk) >= room:
            self._finish()  # enough: the status is what decides

    def on_message_complete(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result((self.status, bytes(self.body)))

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(_HttpFailure(reason))


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

    def url(self, cfg: WorkloadConfig, address: str) -> str:
        return f"http://{host_port(address, cfg.port)}{cfg.target}"

    def describe(self, cfg: WorkloadConfig, address: str) -> str:
        return f"GET {self.url(cfg, address)}"

    async def run(self, cfg: WorkloadConfig, address: str) -> CheckResult:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        url = self.url(cfg, address)
        request = (
            f"GET {cfg.target} HTTP/1.1\r\nHost: {host_port(address, cfg.port)}\r\n"
            f"User-Agent: healthd/{__version__}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        transport: asyncio.BaseTransport | None = None
        try:
            transport, exchange = await loop.create_connection(
                lambda: _Exchange(request), address, cfg.port
            )
            status, body = await exchange.done
        except OSError as exc:
            return self._failed(started, f"HTTP check failed: {url}: {connect_error(exc)}")
        except _HttpFailure as exc:
            return self._failed(started, f"HTTP check failed: {url}: {exc}")
        finally:
            if transport is not None:
                transport.close()
        if 200 <= status < 400:
            return CheckResult(True, time.monotonic() - started)
        text = " ".join(body.decode("utf-8", "replace").split())
        snippet = f": {text[:ERROR_BODY_CHARS]}" if text else ""
        return self._failed(started, f"HTTP {status} from {url}{snippet}")

    @staticmethod
    def _failed(started: float, error: str) -> CheckResult:
        return CheckResult(False, time.monotonic() - started, error)
