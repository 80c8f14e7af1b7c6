"""The http check's options against real servers on loopback: https with a CA the tests make
(trustme), mTLS, certificate expiry, methods and headers as the server receives them, expected
status, body matchers and redirects.

Most cases run the probe directly (``run_check`` or an ``HttpProbe``) against an asyncio server
of the test's own that records every request; nginx proves https, mTLS and keep-alive against
a real server; the real daemon proves the cert_expiring event and the expiry metric.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from healthd.checks import KINDS, patterns, run_check
from healthd.checks.http import MAX_BODY_BYTES
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

from .harness import DaemonProc, connect, free_port, kill_group, nginx_conf, wait_for

UTC = dt.UTC
DAY = 86400.0


def response(status: int = 200, body: bytes = b"ok", *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


# -- a recording server -------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server read it."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    raw_head: bytes
    peer_cert: dict[str, Any] | None  # the client certificate, when one was verified


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]
Route = bytes | Handler


@dataclass
class Site:
    host: str
    port: int
    routes: dict[str, Route]
    seen: list[Seen] = field(default_factory=list)
    accepts: int = 0
    server_names: list[str | None] = field(default_factory=list)  # SNI of each handshake

    def paths(self) -> list[str]:
        return [s.target for s in self.seen]


@contextlib.asynccontextmanager
async def site(
    routes: dict[str, Route], *, host: str = "127.0.0.1", tls_context: ssl.SSLContext | None = None
) -> AsyncIterator[Site]:
    """An HTTP/1.1 server (https with ``tls_context``) answering ``routes`` by path, keeping
    connections open until the client or a ``Connection: close`` answer ends them; 404 for
    any other path."""
    info = Site(host, 0, routes)
    tasks: set[asyncio.Task[object]] = set()
    if tls_context is not None:
        previous: Any = tls_context.sni_callback  # typeshed says the name is never None

        def note_sni(sock: Any, name: str | None, context: ssl.SSLContext) -> int | None:
            info.server_names.append(name)
            return previous(sock, name, context) if previous is not None else None

        tls_context.sni_callback = note_sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.accepts += 1
        number = info.accepts
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            # CancelledError too: the server's end cancels the handlers, and asyncio logs a
            # handler task that ends cancelled as an error
            with contextlib.suppress(
                OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError
            ):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = lines[0].split(" ", 2)
                    headers = {}
                    for line in lines[1:]:
                        if line:
                            name, value = line.split(":", 1)
                            headers[name.strip().lower()] = value.strip()
                    await reader.readexactly(int(headers.get("content-length", "0")))
                    seen = Seen(
                        number, method, target, headers, head, writer.get_extra_info("peercert")
                    )
                    info.seen.append(seen)
                    route = info.routes.get(target.split("?", 1)[0], response(404, b"no route"))
                    if isinstance(route, bytes):
                        writer.write(route)
                        await writer.drain()
                        if b"connection: close" in route.lower():
                            break
                    else:
                        await route(seen, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, 0, ssl=tls_context)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@contextlib.contextmanager
def site_in_thread(routes: dict[str, Route], **kwargs: Any) -> Iterator[Site]:
    """``site`` on a loop of its own in a thread: for tests that drive the daemon."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[Site] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with site(routes, **kwargs) as info:
                ready.set_result(info)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=15)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=15)
        loop.close()


# -- certificates -------------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1 and app.test, another CA nobody trusts, and a
    client CA with a client certificate; everything as PEM files in ``directory``."""

    directory: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    stranger: trustme.CA = field(default_factory=trustme.CA)
    client_ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.stranger.cert_pem.write_to_path(str(self.stranger_file))
        client = self.client_ca.issue_cert("probe@healthd")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_both))
        stranger = self.stranger.issue_cert("intruder@elsewhere")
        stranger.cert_chain_pems[0].write_to_path(str(self.stranger_client[0]))
        stranger.private_key_pem.write_to_path(str(self.stranger_client[1]))

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def stranger_file(self) -> Path:
        return self.directory / "stranger.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def stranger_client(self) -> tuple[Path, Path]:
        return self.directory / "intruder.pem", self.directory / "intruder.key"

    @property
    def client_both(self) -> Path:
        return self.directory / "client-and-key.pem"

    def server_context(
        self,
        *names: str,
        not_after: dt.datetime | None = None,
        require_client_cert: bool = False,
    ) -> ssl.SSLContext:
        cert = self.ca.issue_cert(*(names or ("127.0.0.1",)), not_after=not_after)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.client_ca.configure_trust(context)
        return context

    def write_server_cert(
        self, stem: str, *names: str, not_after: dt.datetime | None = None
    ) -> tuple[Path, Path, float]:
        """(certificate chain, key, notAfter as Unix seconds) files for an outside server."""
        cert = self.ca.issue_cert(*names, not_after=not_after)
        chain, key = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return chain, key, expiry_of(cert.cert_chain_pems[0].bytes())


def expiry_of(pem: bytes) -> float:
    """notAfter, by the cryptography package (an independent reader)."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return Pki(directory)


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(UTC) + dt.timedelta(days=days)


def cfg_for(port: int, **options: Any) -> WorkloadConfig:
    """An http workload for ``port`` with ``options`` (TLS files may be given as paths)."""
    for key in ("ca_file", "client_cert", "client_key"):
        if isinstance(options.get(key), Path):
            options[key] = str(options[key])
    values: dict[str, Any] = {"timeout": 3.0} | options
    return WorkloadConfig(workload="w", type="http", port=port, **values).with_defaults()


async def check(cfg: WorkloadConfig, address: str = "127.0.0.1") -> CheckResult:
    async with asyncio.timeout(cfg.timeout + 5):  # the probe's own deadline comes first
        return await run_check(cfg, address)


async def checks_on_one_probe(cfg: WorkloadConfig, count: int) -> list[CheckResult]:
    """``count`` checks in a row by one probe, as the scheduler runs them (keep-alive)."""
    probe = KINDS["http"].probe(cfg)
    results = []
    try:
        for _ in range(count):
            done: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
            probe.start("127.0.0.1", done.set_result)
            async with asyncio.timeout(cfg.timeout + 5):
                results.append(await done)
    finally:
        probe.close()
    return results


# == https =======================================================================================


async def test_https_verified_with_ca_file(pki: Pki) -> None:
    context = pki.server_context("127.0.0.1", not_after=in_days(40))
    async with site({"/healthz": response()}, tls_context=context) as srv:
        result = await check(cfg_for(srv.port, scheme="https", ca_file=pki.ca_file))
    assert result.ok, result.error
    assert srv.paths() == ["/healthz"]
    assert result.cert_not_after is not None
    assert abs(result.cert_not_after - in_days(40).timestamp()) < 120


async def test_https_with_a_ca_that_did_not_sign_the_server_fails(pki: Pki) -> None:
    async with site({"/healthz": response()}, tls_context=pki.server_context()) as srv:
        result = await check(cfg_for(srv.port, scheme="https", ca_file=pki.stranger_file))
        # nor does the system's trust store know our test CA
        default = await check(cfg_for(srv.port, scheme="https"))
    for bad in (result, default):
        assert not bad.ok
        assert bad.error.startswith(f"HTTP check failed: https://127.0.0.1:{srv.port}/healthz: ")
        assert "TLS: server certificate not accepted: unable to get local issuer" in bad.error
    assert srv.seen == []


async def test_tls_skip_verify_accepts_any_certificate_and_still_reads_its_expiry(
    pki: Pki,
) -> None:
    stranger = trustme.CA().issue_cert("elsewhere.test", not_after=in_days(3))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.configure_cert(context)
    async with site({"/healthz": response()}, tls_context=context) as srv:
        result = await check(cfg_for(srv.port, scheme="https", tls_skip_verify=True))
    assert result.ok, result.error
    assert result.cert_not_after == expiry_of(stranger.cert_chain_pems[0].bytes())


async def test_an_expired_certificate_fails_when_verified(pki: Pki) -> None:
    context = pki.server_context("127.0.0.1", not_after=in_days(-1))
    async with site({"/healthz": response()}, tls_context=context) as srv:
        verified = await check(cfg_for(srv.port, scheme="https", ca_file=pki.ca_file))
        skipped = await check(cfg_for(srv.port, scheme="https", tls_skip_verify=True))
    assert not verified.ok
    assert "certificate has expired" in verified.error
    assert skipped.ok, skipped.error
    assert skipped.cert_not_after is not None
    assert skipped.cert_not_after < time.time()


async def test_the_host_header_names_the_server_for_sni_and_verification(pki: Pki) -> None:
    context = pki.server_context("app.test")  # not valid for 127.0.0.1
    async with site({"/healthz": response()}, tls_context=context) as srv:
        by_address = await check(cfg_for(srv.port, scheme="https", ca_file=pki.ca_file))
        by_name = await check(
            cfg_for(srv.port, scheme="https", ca_file=pki.ca_file, headers=(("Host", "app.test"),))
        )
    assert not by_address.ok
    assert "Hostname mismatch" in by_address.error or "IP address mismatch" in by_address.error
    assert by_name.ok, by_name.error
    assert srv.seen[-1].headers["host"] == "app.test"
    # an IP address is never sent as SNI; the name from the Host header is
    assert srv.server_names == [None, "app.test"]


@contextlib.contextmanager
def blocking_tls_site(context: ssl.SSLContext) -> Iterator[Site]:
    """One request per connection through the ssl module's blocking sockets, which (unlike
    asyncio's TLS transports) send the alert when a handshake fails, as nginx, Go and
    OpenSSL's own servers do."""
    listener = socket.create_server(("127.0.0.1", 0))
    info = Site("127.0.0.1", listener.getsockname()[1], {})

    stop = threading.Event()

    def serve() -> None:
        while True:
            raw, _ = listener.accept()
            if stop.is_set():
                raw.close()
                return
            info.accepts += 1
            with raw:
                raw.settimeout(10)
                try:
                    with context.wrap_socket(raw, server_side=True) as conn:
                        head = b""
                        while b"\r\n\r\n" not in head:
                            head += conn.recv(4096) or b"\r\n\r\n"
                        line = head.decode("latin-1").split("\r\n", 1)[0]
                        method, target, _ = line.split(" ", 2)
                        peer = conn.getpeercert()
                        info.seen.append(Seen(info.accepts, method, target, {}, head, peer))
                        conn.sendall(response(200, b"ok", "Connection: close"))
                except (OSError, ValueError):
                    continue  # a refused handshake: the client's result says what it saw

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        socket.create_connection(("127.0.0.1", info.port), timeout=5).close()  # wakes accept()
        thread.join(timeout=15)
        listener.close()
        assert not thread.is_alive()


async def test_mtls_passes_with_the_client_certificate_and_fails_without(pki: Pki) -> None:
    context = pki.server_context(require_client_cert=True)
    with blocking_tls_site(context) as srv:
        without = await check(cfg_for(srv.port, scheme="https", ca_file=pki.ca_file))
        with_pair = await check(
            cfg_for(
                srv.port,
                scheme="https",
                ca_file=pki.ca_file,
                client_cert=pki.client_cert,
                client_key=pki.client_key,
            )
        )
        one_file = await check(
            cfg_for(srv.port, scheme="https", ca_file=pki.ca_file, client_cert=pki.client_both)
        )
        wrong = await check(
            cfg_for(
                srv.port,
                scheme="https",
                ca_file=pki.ca_file,
                client_cert=pki.stranger_client[0],
                client_key=pki.stranger_client[1],
            )
        )
    assert not without.ok
    assert without.error == (
        f"HTTP check failed: https://127.0.0.1:{srv.port}/healthz: connection lost: TLS: "
        "tlsv13 alert certificate required (the server may require a client certificate: "
        "client_cert)"
    )
    assert with_pair.ok, with_pair.error
    assert one_file.ok, one_file.error
    assert not wrong.ok
    assert "the server refused the client certificate" in wrong.error, wrong.error
    assert len(srv.seen) == 2
    for seen in srv.seen:
        assert seen.peer_cert is not None
        assert "probe@healthd" in str(seen.peer_cert)


async def test_an_asyncio_server_refusing_the_handshake_silently_gets_a_hint(pki: Pki) -> None:
    context = pki.server_context(require_client_cert=True)
    async with site({"/healthz": response()}, tls_context=context) as srv:
        result = await check(cfg_for(srv.port, scheme="https", ca_file=pki.ca_file))
    assert result.error == (
        f"HTTP check failed: https://127.0.0.1:{srv.port}/healthz: connection closed before a "
        "response (right after the TLS handshake: does the server want a client_cert?)"
    )


async def test_https_keeps_its_connection_between_checks_with_keep_alive(pki: Pki) -> None:
    async with site({"/healthz": response()}, tls_context=pki.server_context()) as srv:
        results = await checks_on_one_probe(
            cfg_for(srv.port, scheme="https", ca_file=pki.ca_file, interval=1.0, keep_alive=True),
            4,
        )
    assert all(r.ok for r in results), [r.error for r in results]
    assert srv.accepts == 1
    assert [s.connection for s in srv.seen] == [1, 1, 1, 1]
    assert all(r.cert_not_after is not None for r in results)


async def test_https_makes_a_connection_and_handshake_per_check_by_default(pki: Pki) -> None:
    async with site({"/healthz": response()}, tls_context=pki.server_context()) as srv:
        results = await checks_on_one_probe(
            cfg_for(srv.port, scheme="https", ca_file=pki.ca_file, interval=1.0), 4
        )
    assert all(r.ok for r in results), [r.error for r in results]
    assert srv.accepts == 4
    assert [s.connection for s in srv.seen] == [1, 2, 3, 4]
    assert all(s.headers["connection"] == "close" for s in srv.seen)
    assert all(r.cert_not_after is not None for r in results)


async def test_https_to_a_plain_http_port_says_so(pki: Pki) -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # a ClientHello is no request: answered as HTTP servers do
        writer.write(response(400, b"bad request", "Connection: close"))
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check(cfg_for(port, scheme="https", ca_file=pki.ca_file))
    finally:
        server.close()
        await server.wait_closed()
    assert result.error == (
        f"HTTP check failed: https://127.0.0.1:{port}/healthz: TLS: wrong version number "
        "(does the server speak TLS on this port? scheme: http)"
    )


async def test_https_against_nginx_with_mtls_and_keepalive(
    pki: Pki, tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    nginx = require_binary("nginx")
    chain, key, not_after = pki.write_server_cert("nginx", "127.0.0.1", not_after=in_days(20))
    client_ca = pki.directory / "client-ca.pem"
    pki.client_ca.cert_pem.write_to_path(str(client_ca))
    tls_port = free_port()
    extra = (
        f"    server {{\n        listen 127.0.0.1:{tls_port} ssl;\n"
        f"        ssl_certificate {chain};\n        ssl_certificate_key {key};\n"
        f"        ssl_client_certificate {client_ca};\n        ssl_verify_client on;\n"
        '        location = /healthz { return 200 "tls ok $ssl_client_s_dn"; }\n'
        "        location = /old { return 301 /healthz; }\n"
        '        location / { return 503 "down"; }\n    }\n'
    )
    info = await asyncio.create_subprocess_exec(nginx, "-V", stderr=asyncio.subprocess.PIPE)
    _, build_info = await info.communicate()
    conf = nginx_conf(
        tmp_path,
        free_port(),
        build_info.decode(),
        ok_path="/plain",
        down_body="down",
        connections=64,
        http_extra=extra,
    )
    error_log = tmp_path / "error.log"
    proc = await asyncio.create_subprocess_exec(
        *[nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(error_log)],
        *["-g", "daemon off;"],
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    mtls = {"client_cert": pki.client_cert, "client_key": pki.client_key}
    try:
        cfg = cfg_for(tls_port, scheme="https", ca_file=pki.ca_file, body_contains="tls ok", **mtls)
        deadline = time.monotonic() + 15
        result = await check(cfg)
        while not result.ok and proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            result = await check(cfg)
        assert result.ok, f"{result.error}\n{error_log.read_text()}"
        assert result.cert_not_after == not_after
        kept = await checks_on_one_probe(replace(cfg, interval=1.0), 3)
        assert all(r.ok for r in kept), [r.error for r in kept]
        followed = await check(replace(cfg, target="/old", follow_redirects=True))
        assert followed.ok, followed.error
        refused = await check(cfg_for(tls_port, scheme="https", ca_file=pki.ca_file))
        assert not refused.ok
        # nginx answers 400 "No required SSL certificate was sent": the status decides
        assert refused.error.startswith(f"HTTP 400 from https://127.0.0.1:{tls_port}/healthz")
    finally:
        kill_group(proc.pid)
        await proc.wait()


# == method and headers ==========================================================================


async def test_method_and_headers_reach_the_server() -> None:
    async with site({"/hook": response(200)}) as srv:
        result = await check(
            cfg_for(
                srv.port,
                target="/hook",
                method="POST",
                headers=(("X-Probe", "healthd"), ("Authorization", "Bearer s3cret")),
            )
        )
    assert result.ok, result.error
    [seen] = srv.seen
    assert seen.method == "POST"
    assert seen.headers["x-probe"] == "healthd"
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["content-length"] == "0"  # POST without a body says so (no 411)
    assert seen.headers["host"] == f"127.0.0.1:{srv.port}"
    assert seen.headers["user-agent"].startswith("healthd/")


async def test_configured_user_agent_and_accept_replace_healthds_own() -> None:
    async with site({"/healthz": response()}) as srv:
        result = await check(
            cfg_for(srv.port, headers=(("user-agent", "probe/2"), ("Accept", "text/plain")))
        )
    assert result.ok, result.error
    head = srv.seen[0].raw_head.decode().lower()
    assert head.count("user-agent:") == 1
    assert head.count("accept:") == 1
    assert srv.seen[0].headers["user-agent"] == "probe/2"


async def test_head_ends_at_the_headers_and_keeps_the_connection() -> None:
    # a HEAD answer announces the length of the body it does not send
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with site({"/healthz": head_answer}) as srv:
        results = await checks_on_one_probe(
            cfg_for(srv.port, method="HEAD", interval=1.0, keep_alive=True), 3
        )
    assert all(r.ok for r in results), [r.error for r in results]
    assert [(s.method, s.connection) for s in srv.seen] == [("HEAD", 1)] * 3
    assert all(r.duration < 2.0 for r in results)  # never waited for the announced body


async def test_describe_shows_method_and_scheme() -> None:
    cfg = cfg_for(8443, scheme="https", method="HEAD")
    assert KINDS["http"].describe(cfg, "10.0.0.5") == "HEAD https://10.0.0.5:8443/healthz"
    probe = KINDS["http"].probe(cfg)
    try:
        probe.start("127.0.0.1", lambda _: None)
        assert probe.describe() == "HEAD https://127.0.0.1:8443/healthz"
    finally:
        probe.close()


async def test_https_defaults_to_port_8443() -> None:
    cfg = WorkloadConfig(workload="w", type="http", scheme="https").with_defaults()
    assert cfg.port == 8443
    assert WorkloadConfig(workload="w", type="http").with_defaults().port == 8080


# == expected_status =============================================================================


@pytest.mark.parametrize(
    ("status", "expected", "ok"),
    [
        (204, ((200, 200), (204, 204)), True),
        (200, ((201, 299),), False),
        (418, ((200, 299), (418, 418)), True),
        (500, ((200, 299), (418, 418)), False),
        (302, None, True),  # the default, 200-399
        (404, None, False),
        (503, ((500, 599),), True),  # a maintenance page that must be up
    ],
)
async def test_expected_status(
    status: int, expected: tuple[tuple[int, int], ...] | None, ok: bool
) -> None:
    async with site({"/healthz": response(status, b"body text")}) as srv:
        result = await check(cfg_for(srv.port, expected_status=expected))
    assert result.ok is ok, result.error
    if not ok and expected is not None:
        shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in expected)
        assert result.error == (
            f"HTTP {status} from http://127.0.0.1:{srv.port}/healthz (expected {shown}): body text"
        )
    if not ok and expected is None:  # the reference's message, unchanged
        assert result.error == f"HTTP {status} from http://127.0.0.1:{srv.port}/healthz: body text"


# == body matchers ===============================================================================


async def test_body_contains_and_regex_pass_and_fail() -> None:
    routes: dict[str, Route] = {
        "/healthz": response(200, b'{"status": "ok", "db": "up"}'),
        "/empty": response(200, b""),
    }
    async with site(routes) as srv:
        contains = await check(cfg_for(srv.port, body_contains='"status": "ok"'))
        missing = await check(cfg_for(srv.port, body_contains="degraded"))
        regex = await check(cfg_for(srv.port, body_regex=patterns.compile(r'"db":\s*"up"')))
        no_match = await check(cfg_for(srv.port, body_regex=patterns.compile(r"^OK$")))
        empty = await check(cfg_for(srv.port, target="/empty", body_contains="ok"))
    assert contains.ok, contains.error
    assert regex.ok, regex.error
    url = f"http://127.0.0.1:{srv.port}"
    assert missing.error == (
        f"HTTP 200 from {url}/healthz: body does not contain 'degraded' "
        '(body: {"status": "ok", "db": "up"})'
    )
    assert no_match.error.startswith(f"HTTP 200 from {url}/healthz: body does not match '^OK$'")
    assert (
        empty.error == f"HTTP 200 from {url}/empty: body does not contain 'ok' (the body is empty)"
    )


async def test_body_matchers_see_the_first_10_kib_only() -> None:
    late = b"x" * MAX_BODY_BYTES + b"ok"
    chunked_late = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(late):x}\r\n".encode()
        + late
        + b"\r\n0\r\n\r\n"
    )
    async with site({"/late": response(200, late), "/chunked": chunked_late}) as srv:
        for target in ("/late", "/chunked"):
            result = await check(cfg_for(srv.port, target=target, body_contains="ok"))
            assert not result.ok
            assert "body does not contain 'ok' (first 10 KiB: xxxx" in result.error


async def test_a_stalled_body_is_a_timeout_when_a_matcher_wants_it() -> None:
    async def stall(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(60)

    async with site({"/healthz": stall}) as srv:
        matcher = await check(cfg_for(srv.port, timeout=0.5, body_contains="ok"))
        plain = await check(cfg_for(srv.port, timeout=0.5))
    assert not matcher.ok
    assert matcher.error == (
        "timed out after 500ms reading the body of the HTTP 200 response: "
        f"GET http://127.0.0.1:{srv.port}/healthz"
    )
    assert plain.ok, plain.error  # without a matcher the status decides, as before


async def test_a_body_cut_by_a_reset_fails_when_a_matcher_wants_it() -> None:
    async def reset(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await writer.drain()
        # SO_LINGER 0: the close sends a reset, not a FIN
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with site({"/healthz": reset}) as srv:
        result = await check(cfg_for(srv.port, body_contains="part"))
    assert not result.ok
    assert "connection lost while reading the body" in result.error, result.error


# == redirects ===================================================================================


@pytest.mark.parametrize(
    ("keep_alive", "connections"),
    [(True, [1] * 6), (None, [1, 2, 3, 4, 5, 6])],
    ids=["on-the-kept-connection", "a-connection-per-request"],
)
async def test_redirects_on_the_same_host_are_followed(
    keep_alive: bool | None, connections: list[int]
) -> None:
    routes: dict[str, Route] = {
        "/healthz": response(301, b"", "Location: /step"),
        "/step": response(302, b"moved", "Location: /final?x=1"),
        "/final": response(200, b"arrived"),
    }
    async with site(routes) as srv:
        routes["/step"] = response(
            302, b"moved", f"Location: http://127.0.0.1:{srv.port}/final?x=1"
        )
        cfg = cfg_for(
            srv.port,
            follow_redirects=True,
            body_contains="arrived",
            interval=1.0,
            keep_alive=keep_alive,
        )
        results = await checks_on_one_probe(cfg, 2)
    assert all(r.ok for r in results), [r.error for r in results]
    assert srv.paths() == ["/healthz", "/step", "/final?x=1"] * 2  # each check from the start
    assert [s.connection for s in srv.seen] == connections


async def test_redirect_to_another_host_or_port_is_refused() -> None:
    async with site({"/healthz": response()}) as other:
        routes: dict[str, Route] = {
            "/to-host": response(302, b"", f"Location: http://127.0.0.2:{other.port}/healthz"),
            "/to-port": response(302, b"", f"Location: http://127.0.0.1:{other.port}/healthz"),
            "/to-https": response(302, b"", "Location: https://127.0.0.1/healthz"),
        }
        async with site(routes) as srv:
            for target, where in (
                ("/to-host", f"http://127.0.0.2:{other.port}/healthz"),
                ("/to-port", f"http://127.0.0.1:{other.port}/healthz"),
                ("/to-https", "https://127.0.0.1/healthz"),
            ):
                result = await check(cfg_for(srv.port, target=target, follow_redirects=True))
                assert not result.ok
                assert result.error == (
                    f"HTTP 302 from http://127.0.0.1:{srv.port}{target} redirects to {where}: "
                    "not followed, follow_redirects stays on the same scheme, host and port"
                )
    assert other.seen == []


async def test_a_redirect_loop_stops_after_5() -> None:
    routes: dict[str, Route] = {
        "/a": response(302, b"", "Location: /b"),
        "/b": response(302, b"", "Location: /a"),
    }
    async with site(routes) as srv:
        result = await check(cfg_for(srv.port, target="/a", follow_redirects=True))
    assert not result.ok
    assert result.error.startswith("more than 5 redirects: HTTP 302 from ")
    assert len(srv.seen) == 6


async def test_without_follow_redirects_a_3xx_is_judged_by_its_status() -> None:
    routes: dict[str, Route] = {"/healthz": response(302, b"", "Location: /elsewhere")}
    async with site(routes) as srv:
        default = await check(cfg_for(srv.port))
        strict = await check(cfg_for(srv.port, expected_status=((200, 299),)))
    assert default.ok, default.error
    assert not strict.ok
    assert srv.paths() == ["/healthz", "/healthz"]


async def test_redirects_follow_the_host_header_name(pki: Pki) -> None:
    context = pki.server_context("app.test")
    async with site({}, tls_context=context) as srv:
        srv.routes["/healthz"] = response(
            308, b"", f"Location: https://app.test:{srv.port}/v2/healthz"
        )
        srv.routes["/v2/healthz"] = response(200, b"v2")
        result = await check(
            cfg_for(
                srv.port,
                scheme="https",
                ca_file=pki.ca_file,
                headers=(("Host", f"app.test:{srv.port}"),),
                follow_redirects=True,
                method="POST",
            )
        )
    assert result.ok, result.error
    assert [(s.method, s.target) for s in srv.seen] == [
        ("POST", "/healthz"),
        ("POST", "/v2/healthz"),
    ]


# == the real daemon: cert_expiring and healthd_tls_cert_expiry_seconds ==========================


def expiry_metrics(api_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "healthd_tls_cert_expiry_seconds":
            for sample in family.samples:
                out[sample.labels["workload"]] = sample.value
    return out


def test_cert_expiring_is_announced_once_per_certificate_and_the_metric_follows(
    daemon: DaemonProc, pki: Pki
) -> None:
    current: list[ssl.SSLContext] = []
    certs: dict[str, trustme.LeafCert] = {
        "soon": pki.ca.issue_cert("127.0.0.1", not_after=in_days(2)),
        "sooner": pki.ca.issue_cert("127.0.0.1", not_after=in_days(1)),
        "renewed": pki.ca.issue_cert("127.0.0.1", not_after=in_days(90)),
    }
    contexts = {}
    for name, cert in certs.items():
        contexts[name] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(contexts[name])
    expiry = {name: expiry_of(c.cert_chain_pems[0].bytes()) for name, c in certs.items()}
    front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs["soon"].configure_cert(front)
    current.append(contexts["soon"])

    def choose(sock: Any, name: str | None, context: ssl.SSLContext) -> None:
        sock.context = current[0]  # the certificate served now, for each new handshake

    front.sni_callback = choose
    # a new connection per check, so that a changed certificate is seen at the next one
    routes: dict[str, Route] = {"/healthz": response(200, b"ok", "Connection: close")}
    with site_in_thread(routes, tls_context=front) as srv:
        common = (
            f"type: http\nscheme: https\nhost: 127.0.0.1\nport: {srv.port}\n"
            f"ca_file: {pki.ca_file}\ninterval: 200ms\ntimeout: 2s\n"
        )
        (daemon.config_dir / "web.yaml").write_text(
            f"workload: web\n{common}cert_expiry_warn: 336h\n"
        )
        (daemon.config_dir / "calm.yaml").write_text(
            f"workload: calm\n{common}cert_expiry_warn: 1h\n"
        )
        (daemon.config_dir / "quiet.yaml").write_text(f"workload: quiet\n{common}")
        daemon.start()
        api = connect(daemon)

        def announced() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = api.get("/v1/events?type=cert_expiring&limit=100")[
                "events"
            ]
            return found

        def checks_of(name: str) -> int:
            return int(api.get(f"/v1/status/{name}")["total_checks"])

        def more_checks(name: str, count: int) -> None:
            start = checks_of(name)
            wait_for(f"{count} more checks of {name}", lambda: checks_of(name) >= start + count)

        first = wait_for("cert_expiring for web", announced, detail=daemon.log)
        more_checks("web", 10)
        assert len(announced()) == 1  # not again at every check
        [event] = first
        assert event["workload"] == "web"
        assert event["details"]["not_after"] == dt.datetime.fromtimestamp(
            expiry["soon"], UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert event["details"]["cert_expiry_warn"] == "336h0m0s"
        assert 1.9 * DAY < event["details"]["seconds_left"] <= 2 * DAY
        assert "TLS certificate of 127.0.0.1 expires in 1d23h" in event["message"]

        metrics = expiry_metrics(daemon.api_url())
        assert set(metrics) == {"web", "calm", "quiet"}
        for name in metrics:
            assert abs(metrics[name] - (expiry["soon"] - time.time())) < 60

        current[0] = contexts["sooner"]  # another certificate, still too close to its end
        wait_for("a second cert_expiring", lambda: len(announced()) == 2, detail=daemon.log)
        assert announced()[1]["details"]["seconds_left"] <= DAY

        current[0] = contexts["renewed"]
        wait_for(
            "the metric to show the renewed certificate",
            lambda: expiry_metrics(daemon.api_url()).get("web", 0) > 80 * DAY,
        )
        more_checks("web", 5)
        assert len(announced()) == 2

        current[0] = contexts["soon"]  # back below the threshold: announced again
        wait_for("a third cert_expiring", lambda: len(announced()) == 3, detail=daemon.log)
        assert all(e["workload"] == "web" for e in announced())
        log_lines = daemon.events("cert_expiring")
        assert len(log_lines) >= 3


def test_tls_files_changed_in_place_are_read_again_at_the_next_connection(
    daemon: DaemonProc, pki: Pki
) -> None:
    """The context is built once, and again when its files change (inode, size, mtime): a
    renewed CA or client certificate is used from the next connection on, without a reload;
    a file that no longer loads fails the check, saying which."""
    context = pki.server_context("127.0.0.1")
    ca_file = pki.directory / "rotating-ca.pem"
    pki.stranger.cert_pem.write_to_path(str(ca_file))  # not the CA that signed the server
    routes: dict[str, Route] = {"/healthz": response()}
    with site_in_thread(routes, tls_context=context) as srv:
        (daemon.config_dir / "web.yaml").write_text(
            f"workload: web\ntype: http\nscheme: https\nhost: 127.0.0.1\nport: {srv.port}\n"
            f"ca_file: {ca_file}\ninterval: 200ms\ntimeout: 2s\nretries: 1\n"
        )
        daemon.start()
        api = connect(daemon)
        failing = api.wait_status("web", lambda s: s["state"] == "unhealthy")
        assert "unable to get local issuer certificate" in failing["last_error"]

        pki.ca.cert_pem.write_to_path(str(ca_file))  # the right CA, same path
        api.wait_status("web", lambda s: s["state"] == "healthy")

        # a new connection per check from now on, so that the next change is met at once
        routes["/healthz"] = response(200, b"ok", "Connection: close")
        ca_file.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        broken = api.wait_status("web", lambda s: s["state"] == "unhealthy")
        assert broken["last_error"].startswith(
            f"HTTP check failed: https://127.0.0.1:{srv.port}/healthz: the TLS files "
            f"({ca_file}) do not load: "
        )
