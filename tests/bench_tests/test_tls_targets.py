"""https targets: the throwaway certificates, and the built-in server and nginx speaking TLS and
counting handshakes, resumed ones apart (so that a run reporting none resumed means something).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from bench.certs import CertFiles, make_certificates
from bench.loopback import LOOPBACK
from bench.nginx import NginxTarget, handshake_stats
from bench.protocols import TlsStats
from bench.targets import BuiltinTarget, ServerSentinel

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture
def certs(require_binary: Callable[[str], str], tmp_path: Path) -> CertFiles:
    return make_certificates(tmp_path / "tls", openssl=require_binary("openssl"))


def strict_client(ca: Path) -> ssl.SSLContext:
    """A client that verifies as healthd does, and as strictly as OpenSSL can (X509_STRICT:
    what Python 3.13 adds to its default context)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def get(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One request on a new TLS connection: (response, the session to resume, resumed?)."""
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK, session=session) as tls,
    ):
        tls.sendall(REQUEST)
        response = b""
        while chunk := tls.recv(4096):
            response += chunk
        # TLS 1.3 tickets come after the handshake: only now is the session resumable
        return response, tls.session, bool(tls.session_reused)


@pytest.mark.needs("openssl")
def test_certificates_verify_for_127_0_0_1_only(certs: CertFiles, tmp_path: Path) -> None:
    assert not (certs.ca.parent / "ca.key").exists()  # nobody signs anything else with it
    sentinel = ServerSentinel("https", tmp_path, certs)
    try:
        check = sentinel.start()
        assert check.ca_file == str(certs.ca)
        assert check.port is not None
        response, _, _ = get(check.port, strict_client(certs.ca))
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert response.endswith(b"ok\n")
        for context, name in [
            (strict_client(certs.ca), "localhost"),  # not a name the certificate has
            (ssl.create_default_context(), LOOPBACK),  # not trusted without the CA
        ]:
            with (
                socket.create_connection((LOOPBACK, check.port), timeout=5) as raw,
                pytest.raises(ssl.SSLCertVerificationError),
            ):
                context.wrap_socket(raw, server_hostname=name).close()
    finally:
        sentinel.stop()


@pytest.mark.needs("openssl")
def test_builtin_target_counts_handshakes_and_resumptions(certs: CertFiles, tmp_path: Path) -> None:
    target = BuiltinTarget("https", tmp_path, certs)
    try:
        check = target.start()
        assert check.port is not None
        context = strict_client(certs.ca)
        _, session, resumed = get(check.port, context)
        assert not resumed
        _, _, resumed = get(check.port, context, session)
        assert resumed
        get(check.port, context)  # a new session: what a client that keeps none does
        counts = target.counts()
        assert (counts.checks, counts.connections) == (3, 3)
        assert target.tls_stats() == TlsStats(3, 1, {"TLSv1.3": 3})
    finally:
        target.stop()


@pytest.mark.needs("nginx")
@pytest.mark.needs("openssl")
def test_nginx_https_target_counts_handshakes_and_resumptions(
    require_binary: Callable[[str], str], certs: CertFiles, tmp_path: Path
) -> None:
    target = NginxTarget("https", require_binary("nginx"), tmp_path / "nginx", certs)
    try:
        check = target.start()
        assert check.port is not None
        assert check.ca_file == str(certs.ca)
        context = strict_client(certs.ca)
        response, session, resumed = get(check.port, context)
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert response.endswith(b"ok\n")
        assert not resumed
        _, _, resumed = get(check.port, context, session)  # nginx's default: tickets on
        assert resumed
        get(check.port, context)
        counts = target.counts()
        assert (counts.checks, counts.connections) == (3, 3)
        stats = target.tls_stats()  # stops nginx, which writes out its log
    finally:
        target.stop()
    assert stats == TlsStats(3, 1, {"TLSv1.3": 3})


def test_handshake_log_lines() -> None:
    log = "r TLSv1.3\n. TLSv1.3\n. TLSv1.2\n\ngarbage\n"
    assert handshake_stats(log) == TlsStats(3, 1, {"TLSv1.3": 2, "TLSv1.2": 1})
    assert handshake_stats("") == TlsStats(0, 0, {})
