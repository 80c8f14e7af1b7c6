"""Loopback helpers shared by the targets: free ports, plain HTTP GETs, what a check points at."""

from __future__ import annotations

import http.client
import socket

from bench.certs import CertFiles
from bench.errors import BenchError
from bench.workloads import CheckTarget, http_target, tcp_target

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds a target may take to listen


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    """Body of ``GET http://127.0.0.1:PORT/PATH`` (no proxy is ever consulted)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {LOOPBACK}:{port}{path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


def check_target(kind: str, port: int, tls: CertFiles | None = None) -> CheckTarget:
    """What the workloads of ``kind`` check on a loopback server listening on ``port``; for
    https, ``tls`` holds the CA they trust."""
    if kind == "https":
        if tls is None:
            raise BenchError("an https target needs its certificates")
        return http_target(port, LOOPBACK, ca_file=str(tls.ca))
    return http_target(port, LOOPBACK) if kind == "http" else tcp_target(port, LOOPBACK)
