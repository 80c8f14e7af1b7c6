"""JudgingProbe: an http probe whose responses are judged by more than 200-399.

``expected_status`` (codes and ranges), ``body_contains`` / ``body_regex`` (on the first
10 KiB of the body, read to its end or that cap; a body that stalls is then a timeout, and one
cut by a reset a failure), ``method: HEAD`` (the exchange ends with the headers: httptools does
not know the request's method, and a HEAD answer's Content-Length announces a body that never
comes) and ``follow_redirects``.

Redirects (301, 302, 303, 307, 308 with a Location) are followed to the same scheme, host and
port only: the address checked, or the name and port of a configured ``Host`` header. At most
``MAX_REDIRECTS``, within the check's one deadline, on the kept connection when the server
keeps it. 303, and 301/302 after a POST, continue with GET, as browsers and curl do. Each
check starts again from the configured target.

A subclass rather than branches in HttpProbe: plain GETs, most workloads, pay nothing for it.
"""

from __future__ import annotations

import asyncio
import urllib.parse

from healthd.checks.http_probe import (
    ERROR_BODY_CHARS,
    MAX_BODY_BYTES,
    HttpProbe,
)
from healthd.checks.probe import host_port

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}


class JudgingProbe(HttpProbe):
    __slots__ = ()

    # -- the exchange -------------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._redirects and self._request_for == self.address:
            # the last check was redirected: this one starts from the configured target
            self._now_request, self._now_url, self._redirects = self._request, self._url, 0
        super()._begin(loop)

    def _prepare(self, address: str) -> None:
        super()._prepare(address)
        self._redirects = 0
        opts = self._opts
        if opts.follow:
            origins = {(opts.scheme, address.lower(), self.cfg.port)}
            if opts.host_header is not None:
                named = urllib.parse.urlsplit(f"//{opts.host_header}")
                port = named.port or DEFAULT_PORTS[opts.scheme]
                origins.add((opts.scheme, (named.hostname or "").lower(), port))
            self._origins = frozenset(origins)

    def _new_message(self) -> None:
        super()._new_message()
        self._location = None

    def _on_deadline(self) -> None:
        status = self._status
        if self._parser is not None and status:
            opts = self._opts
            redirect = opts.follow and self._location is not None and status in REDIRECT_STATUSES
            if not redirect and (status not in opts.codes or not opts.reads_body):
                super()._on_deadline()  # the status decides, as in HttpProbe
                return
            # the body (or the redirect) was wanted, and did not come in time
            self._abort()
            self._finish(
                False,
                f"timed out after {self._timeout_text} reading the body of the HTTP {status} "
                f"response: {opts.method} {self._now_url}",
            )
            return
        super()._on_deadline()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if (
            self._opts.follow
            and self._parser is not None
            and len(name) == 8
            and name.lower() == b"location"
        ):
            self._location = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        super().on_headers_complete()
        if parser is not None and self._opts.head and self._status >= 200:
            # A HEAD answer has no body, whatever its Content-Length says: it ends here. (An
            # interim 1xx ends as a message of its own, read past by on_message_complete.)
            self._complete(keep=self.keepalive and parser.should_keep_alive())

    # -- outcomes ---------------------------------------------------------------------------

    def _complete(self, *, keep: bool, cut: str = "") -> None:
        self._parser = None
        if not keep:
            self._drop_connection()
        status = self._status
        opts = self._opts
        if opts.follow and self._location is not None and status in REDIRECT_STATUSES:
            self._redirect(status, keep=keep)
            return
        if status in opts.codes:
            # A body cut short is an incomplete message (RFC 9112 8): a matcher never judges
            # it, even when the part that came holds what it looks for.
            if opts.reads_body and (problem := cut or self._body_mismatch()):
                self._finish(False, f"HTTP {status} from {self._now_url}: {problem}")
                return
            self._finish(True, note=cut)
            return
        self._finish(False, f"HTTP {status} from {self._now_url}{opts.expected}{self._snippet()}")

    def _body_mismatch(self) -> str | None:
        """Why the body read does not match, or None."""
        opts = self._opts
        body = self._body
        if opts.needle is not None and opts.needle not in body:
            problem = f"body does not contain {opts.needle_text!r}"
        elif opts.regex is not None and not opts.regex.search(body.decode("utf-8", "replace")):
            problem = f"body does not match {opts.regex.pattern!r}"
        else:
            return None
        if not body:
            return f"{problem} (the body is empty)"
        text = " ".join(body.decode("utf-8", "replace").split())[:ERROR_BODY_CHARS]
        read = f"first {MAX_BODY_BYTES // 1024} KiB" if len(body) >= MAX_BODY_BYTES else "body"
        return f"{problem} ({read}: {text})"

    def _redirect(self, status: int, *, keep: bool) -> None:
        assert self._location is not None
        location = self._location.decode("latin-1")
        came_from = self._now_url
        invalid = f"HTTP {status} from {came_from}: invalid Location {location!r}"
        try:
            url = urllib.parse.urljoin(came_from, location)
            parts = urllib.parse.urlsplit(url)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
        except ValueError:
            self._finish(False, invalid)
            return
        if (parts.scheme.lower(), (parts.hostname or "").lower(), port) not in self._origins:
            self._finish(
                False,
                f"HTTP {status} from {came_from} redirects to {url}: not followed, "
                "follow_redirects stays on the same scheme, host and port",
            )
            return
        if self._redirects >= MAX_REDIRECTS:
            self._finish(
                False,
                f"more than {MAX_REDIRECTS} redirects: HTTP {status} from {came_from} "
                f"redirects to {url}",
            )
            return
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not all("!" <= c <= "~" for c in target):
            self._finish(False, invalid)
            return
        opts = self._opts
        method = opts.method
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method = "GET"
        authority = host_port(self.address, self.cfg.port)
        self._redirects += 1
        self._now_url = f"{opts.scheme}://{authority}{target}"
        self._now_request = self._encode(method, target, opts.host_header or authority)
        conn = self._conn
        if keep and conn is not None and not conn.closed:
            self._send(conn, reused=True)
        else:
            assert self._loop is not None
            self._open(self._loop)
