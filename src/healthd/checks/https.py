"""HttpsProbe: an http probe over TLS, through the loop's own SSL transport
(``create_connection(ssl=..., server_hostname=...)``), keeping its connection between checks
as plain http does.

The name sent as SNI and verified against the certificate is the host of a configured
``Host`` header, else the address checked (an IP address is verified against the
certificate's IP addresses, and sent as no SNI). Every result carries the expiry of the
certificate the server presented on the connection (``CheckResult.cert_not_after``), for the
metric and the ``cert_expiring`` event (``engine/certs.py``). The client context and the
files behind it are ``tls.py``'s.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

from healthd.checks import tls
from healthd.checks.http_probe import HttpConnection, HttpProbe
from healthd.checks.probe import connect_error
from healthd.model import CheckResult

if TYPE_CHECKING:
    from healthd.config.workload import WorkloadConfig


def _in_handshake(exc: Exception) -> str:
    """What broke a connection that was made, during its TLS handshake; "" for anything else
    (a refused or unreachable connect is no reset, and TLS alerts are ``tls.error_text``'s)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) or (
        isinstance(exc, ConnectionResetError) and not exc.errno  # the loop's "lost", no errno
    ):
        return "connection closed by the server during the TLS handshake"
    if isinstance(exc, ConnectionResetError):
        return "connection reset during the TLS handshake"
    if isinstance(exc, BrokenPipeError):
        return "connection closed during the TLS handshake (broken pipe)"
    if isinstance(exc, ConnectionAbortedError):
        return "connection aborted during the TLS handshake"
    return ""


class HttpsProbe(HttpProbe):
    __slots__ = ("_files", "_not_after", "_server_name", "_settings", "_tls")

    _bare_sockets = False  # TLS is the loop's SSL transport's

    def __init__(self, cfg: WorkloadConfig) -> None:
        super().__init__(cfg)
        self._not_after: float | None = None  # of the connection's server certificate
        self._server_name = ""
        self._settings = tls.TlsSettings(
            bool(cfg.tls_skip_verify), cfg.ca_file, cfg.client_cert, cfg.client_key, cfg.authors
        )
        self._files: tls.Signature = ()
        self._tls: ssl.SSLContext | str = ""  # the context, or why there is none
        self._refresh_context()

    def _refresh_context(self) -> None:
        """Build the context, again if its files changed since (a renewed certificate)."""
        files = tls.signature(self._settings) if self._settings.files else ()
        if files == self._files and isinstance(self._tls, ssl.SSLContext):
            return
        try:
            self._tls = tls.client_context(self._settings, files)
        except tls.TlsFileError as exc:
            self._tls = str(exc)
        self._files = files

    def _prepare(self, address: str) -> None:
        super()._prepare(address)
        self._server_name = tls.server_name(self._opts.host_header, address)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        self._not_after = None
        if self._settings.files:
            self._refresh_context()
        context = self._tls
        if isinstance(context, str):
            self._opening = None
            self._fail(context)
            return
        try:
            transport, conn = await loop.create_connection(
                lambda: HttpConnection(self),
                self.address,
                self.cfg.port,
                ssl=context,
                server_hostname=self._server_name,
            )
        except (OSError, UnicodeError, ValueError) as exc:  # ValueError: CertificateError
            self._opening = None
            self._fail(_in_handshake(exc) or self._reason(exc))
            return
        self._not_after = tls.peer_not_after(transport.get_extra_info("ssl_object"))
        self._connected(conn)

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, ssl.SSLError):
            return tls.error_text(exc, has_client_cert=self.cfg.client_cert is not None)
        return connect_error(exc)

    def _closed_early(self) -> str:
        text = super()._closed_early()
        if self._reused or self.cfg.client_cert is not None:
            return text
        # what servers that want a client certificate often do (asyncio's among them) instead
        # of sending TLS's "certificate required" alert
        return f"{text} (right after the TLS handshake: does the server want a client_cert?)"

    def _finish(self, ok: bool, error: str = "", note: str = "") -> None:
        # Probe._finish, with the certificate's expiry in the result
        done = self._done
        if done is None:
            return
        self._done = None
        self._disarm()
        done(CheckResult(ok, time.monotonic() - self._started, error, self._not_after, note))
