"""The built-in loopback target: a tiny asyncio HTTP/1.1 server that counts what it serves.

Run as a child process of the bench (by file path, so it needs nothing but the stdlib):

    python target_server.py [--host 127.0.0.1] [--label TEXT] [--cert PEM --key PEM]

It listens on two free ports of ``--host``: the target (``GET /healthz`` -> 200 ``ok``, any other
path -> 404; HTTP/1.1 keep-alive and pipelining supported; a TCP check that connects and closes
is fine too) and a stats port that answers any request with the counters as JSON:
``requests`` served and connections ``accepted`` on the target port, and for TLS
``tls_handshakes`` completed, how many of them ``tls_resumed`` a session and ``tls_versions``
(handshakes by protocol version); the stats port's own traffic is not counted. With ``--cert``
and ``--key`` the target port speaks TLS (the stats port stays plain HTTP), and a connection is
counted once its handshake is done. Once both listen it prints one JSON line, ``{"port": P,
"stats_port": S}``, on stdout. SIGTERM or SIGINT closes both listeners and every open
connection, then exits 0. ``--label`` is ignored: it only names the process in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


class Counters:
    def __init__(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.tls_handshakes = 0
        self.tls_resumed = 0
        self.tls_versions: dict[str, int] = {}


def _response(status: str, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Request:
    """A parsed request head: method, path, version, and the headers it needs."""

    def __init__(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("bad request line")
        self.method, self.path, self.version = parts
        self.connection = b""
        self.length = 0
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError("bad header line")
            name, value = name.strip().lower(), value.strip()
            if name == b"connection":
                self.connection = value.lower()
            elif name == b"content-length":
                self.length = int(value)
                if not 0 <= self.length <= MAX_BODY:
                    raise ValueError("bad content-length")
            elif name == b"transfer-encoding":
                raise ValueError("chunked request bodies are not supported")

    @property
    def keep_alive(self) -> bool:
        if self.version == b"HTTP/1.1":
            return self.connection != b"close"
        return self.connection == b"keep-alive"


class _HttpConnection(asyncio.Protocol):
    """One connection: parse requests as they complete, answer each with ``answer``."""

    def __init__(self, server: TargetServer, *, counted: bool) -> None:
        self.server = server
        self.counted = counted
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(transport)
        if not self.counted:
            return
        counters = self.server.counters
        counters.accepted += 1
        # asyncio calls connection_made once the TLS handshake is over
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            counters.tls_handshakes += 1
            counters.tls_resumed += bool(tls.session_reused)
            version = str(tls.version())
            counters.tls_versions[version] = counters.tls_versions.get(version, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer += data
        while not transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    transport.write(_response("431 Request Header Fields Too Large", b"", False))
                    transport.close()
                return
            try:
                request = _Request(bytes(self.buffer[:end]))
            except ValueError as exc:
                transport.write(_response("400 Bad Request", f"{exc}\n".encode(), False))
                transport.close()
                return
            total = end + 4 + request.length
            if len(self.buffer) < total:
                return  # the body is still coming
            del self.buffer[:total]
            status, body = self.answer(request)
            transport.write(
                _response(status, body if request.method != b"HEAD" else b"", request.keep_alive)
            )
            if not request.keep_alive:
                transport.close()

    def answer(self, request: _Request) -> tuple[str, bytes]:
        if not self.counted:  # the stats port
            return "200 OK", json.dumps(vars(self.server.counters)).encode() + b"\n"
        self.server.counters.requests += 1
        if request.method in (b"GET", b"HEAD") and request.path == b"/healthz":
            return "200 OK", b"ok\n"
        return "404 Not Found", b"not found\n"


class TargetServer:
    def __init__(self) -> None:
        self.counters = Counters()
        self.connections: set[asyncio.Transport] = set()

    async def serve(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        target = await loop.create_server(
            lambda: _HttpConnection(self, counted=True), host, 0, backlog=4096, ssl=tls
        )
        stats = await loop.create_server(
            lambda: _HttpConnection(self, counted=False), host, 0, backlog=64
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ports = {
            "port": target.sockets[0].getsockname()[1],
            "stats_port": stats.sockets[0].getsockname()[1],
        }
        sys.stdout.write(json.dumps(ports) + "\n")
        sys.stdout.flush()
        await stop.wait()
        target.close()
        stats.close()
        for transport in list(self.connections):
            transport.abort()
        await target.wait_closed()
        await stats.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="healthd bench built-in loopback target")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--label", default="", help="ignored; names the process in ps")
    parser.add_argument("--cert", help="PEM certificate (chain): the target port speaks TLS")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args(argv)
    tls = None
    if args.cert:
        # the server-side defaults: session cache and tickets on, as a client could resume
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    asyncio.run(TargetServer().serve(args.host, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
