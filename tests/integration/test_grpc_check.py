"""grpc checks against a real gRPC server speaking grpc.health.v1 (grpcio-health-checking's
servicer), in this process on 127.0.0.1, with TLS from a throwaway trustme CA; and the real
daemon, which runs them on uvloop and loads grpcio only when a grpc workload is configured."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from healthd.checks import run_check
from healthd.checks.grpc import GrpcProbe
from healthd.config.workload import WorkloadConfig
from healthd.model import CheckResult

from .harness import PY, DaemonProc, connect, free_port, write

Status = health_pb2.HealthCheckResponse


class PeerRecordingServicer(health.HealthServicer):  # type: ignore[misc]
    """The health service, noting the client address (its port: its connection) of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    def Check(self, request: object, context: grpc.ServicerContext) -> object:
        self.peers.append(context.peer())
        return super().Check(request, context)


@dataclass
class HealthServer:
    port: int
    health: PeerRecordingServicer
    server: grpc.Server

    def stop(self) -> None:
        self.server.stop(None).wait()


@contextlib.contextmanager
def serving(
    port: int = 0,
    *,
    with_health: bool = True,
    credentials: grpc.ServerCredentials | None = None,
) -> Iterator[HealthServer]:
    """A gRPC server on 127.0.0.1 whose health service says SERVING for the whole server."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = PeerRecordingServicer()
    if with_health:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    assert bound, f"could not listen on {address}"
    servicer.set("", Status.SERVING)
    server.start()
    running = HealthServer(bound, servicer, server)
    try:
        yield running
    finally:
        running.stop()


def grpc_cfg(
    port: int,
    timeout: float = 5.0,
    *,
    service: str | None = None,
    tls: bool | None = None,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    keep_alive: bool | None = None,
) -> WorkloadConfig:
    return WorkloadConfig(
        workload="w",
        type="grpc",
        port=port,
        timeout=timeout,
        service=service,
        tls=tls,
        ca_file=ca_file,
        client_cert=client_cert,
        client_key=client_key,
        keep_alive=keep_alive,
    )


async def check(probe: GrpcProbe, address: str = "127.0.0.1") -> CheckResult:
    result: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe.start(address, result.set_result)
    return await result


def established_to(port: int) -> int:
    """This host's established TCP connections to 127.0.0.1:``port`` (grpc's sockets are
    dual-stack: IPv4-mapped in /proc/net/tcp6)."""
    remotes = {f"0100007F:{port:04X}", f"0000000000000000FFFF00000100007F:{port:04X}"}
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2] in remotes and fields[3] == "01":  # 01: ESTABLISHED
                count += 1
    return count


# -- answers of the health service ----------------------------------------------------------------


async def test_serving_is_healthy_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)  # the daemon's loop
    with serving() as srv:
        result = await run_check(grpc_cfg(srv.port), "127.0.0.1")
    assert result.ok, result.error
    assert result.error == ""


async def test_not_serving_unknown_and_back() -> None:
    with serving() as srv:
        probe = GrpcProbe(grpc_cfg(srv.port))
        try:
            srv.health.set("", Status.NOT_SERVING)
            down = await check(probe)
            srv.health.set("", Status.UNKNOWN)
            unknown = await check(probe)
            srv.health.set("", Status.SERVING)
            up = await check(probe)
        finally:
            probe.close()
    assert down.error == f"gRPC check failed: 127.0.0.1:{srv.port}: health status NOT_SERVING"
    assert unknown.error == f"gRPC check failed: 127.0.0.1:{srv.port}: health status UNKNOWN"
    assert up.ok, up.error


async def test_a_named_service() -> None:
    with serving() as srv:
        srv.health.set("shop.Cart", Status.NOT_SERVING)
        down = await run_check(grpc_cfg(srv.port, service="shop.Cart"), "127.0.0.1")
        srv.health.set("shop.Cart", Status.SERVING)
        up = await run_check(grpc_cfg(srv.port, service="shop.Cart"), "127.0.0.1")
    assert down.error == (
        f"gRPC check failed: 127.0.0.1:{srv.port} service 'shop.Cart': health status NOT_SERVING"
    )
    assert up.ok, up.error


async def test_a_service_the_server_does_not_know() -> None:
    with serving() as srv:
        result = await run_check(grpc_cfg(srv.port, service="shop.Nope"), "127.0.0.1")
    assert result.error == (
        f"gRPC check failed: 127.0.0.1:{srv.port} service 'shop.Nope': "
        "service 'shop.Nope' is unknown to its health service (NOT_FOUND)"
    )


async def test_a_server_without_the_health_service() -> None:
    with serving(with_health=False) as srv:
        result = await run_check(grpc_cfg(srv.port), "127.0.0.1")
    assert result.error == (
        f"gRPC check failed: 127.0.0.1:{srv.port}: "
        "the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)"
    )


# -- the connection -------------------------------------------------------------------------------


async def test_each_check_has_a_connection_of_its_own_by_default() -> None:
    with serving() as srv:
        probe = GrpcProbe(grpc_cfg(srv.port))
        try:
            results = []
            for _ in range(4):
                results.append(await check(probe))
                for _ in range(50):  # the close runs on the loop, right after the result
                    if established_to(srv.port) == 0:
                        break
                    await asyncio.sleep(0.02)
                assert established_to(srv.port) == 0
        finally:
            probe.close()
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(srv.health.peers) == 4
    assert len(set(srv.health.peers)) == 4, srv.health.peers  # four client ports


async def test_one_connection_is_kept_across_checks_with_keep_alive() -> None:
    with serving() as srv:
        probe = GrpcProbe(grpc_cfg(srv.port, keep_alive=True))
        try:
            results = [await check(probe) for _ in range(5)]
            srv.health.set("", Status.NOT_SERVING)  # an answer too: the connection stays
            results.append(await check(probe))
            assert established_to(srv.port) == 1
        finally:
            probe.close()
        await asyncio.sleep(0.1)  # the close runs on the loop
        assert established_to(srv.port) == 0
    assert [r.ok for r in results] == [True] * 5 + [False]
    assert len(set(srv.health.peers)) == 1, srv.health.peers


async def test_server_down_then_back_on_the_same_port() -> None:
    port = free_port()
    probe = GrpcProbe(grpc_cfg(port))
    try:
        with serving(port) as srv:
            assert (await check(probe)).ok
            srv.stop()
            down = await check(probe)
            refused = await check(probe)  # a fresh channel, nothing listening
        with serving(port):
            # grpc would hold a failed channel in reconnect backoff for a second or more: the
            # probe connects afresh instead, so the first check sees the server back
            back = await check(probe)
    finally:
        probe.close()
    for result in (down, refused):
        assert result.error.startswith(f"gRPC check failed: 127.0.0.1:{port}: UNAVAILABLE: ")
    assert "Connection refused" in refused.error, refused.error
    assert back.ok, back.error


async def test_nothing_listening_is_unavailable() -> None:
    port = free_port()
    result = await run_check(grpc_cfg(port), "127.0.0.1")
    assert result.error.startswith(f"gRPC check failed: 127.0.0.1:{port}: UNAVAILABLE: ")
    assert "Connection refused" in result.error


async def test_a_wedged_server_times_out_and_the_connection_is_dropped() -> None:
    # accepted by the kernel (listen backlog), never answered: like a SIGSTOPped server
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        probe = GrpcProbe(grpc_cfg(port, timeout=0.5))
        try:
            result = await check(probe)
            # Not kept for the next check, and not left to grpc's 20 s connect deadline either
            # (it outlives the channel): gone within about the check's timeout.
            for _ in range(100):
                if established_to(port) == 0:
                    break
                await asyncio.sleep(0.1)
            assert established_to(port) == 0
        finally:
            probe.close()
    assert result.error == f"timed out after 500ms: grpc 127.0.0.1:{port}"
    assert 0.5 <= result.duration < 3.0


async def test_an_http_server_that_is_not_grpc() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_check(grpc_cfg(port, timeout=2.0), "127.0.0.1")
    finally:
        server.close()
        await server.wait_closed()
    assert not result.ok
    assert result.error.startswith(f"gRPC check failed: 127.0.0.1:{port}: UNAVAILABLE: ")


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> grpc.ServerCredentials:
    cert = ca.issue_cert("127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), chain)],
        root_certificates=client_ca.cert_pem.bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def pem_file(directory: Path, name: str, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    return str(path)


async def test_tls_verified_against_the_ca_file(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = pem_file(tmp_path, "ca.pem", ca.cert_pem.bytes())
    with serving(credentials=server_tls(ca)) as srv:
        result = await run_check(grpc_cfg(srv.port, tls=True, ca_file=ca_file), "127.0.0.1")
    assert result.ok, result.error


async def test_tls_with_the_wrong_ca_fails(ca: trustme.CA, tmp_path: Path) -> None:
    other = pem_file(tmp_path, "other.pem", trustme.CA().cert_pem.bytes())
    with serving(credentials=server_tls(ca)) as srv:
        wrong = await run_check(grpc_cfg(srv.port, tls=True, ca_file=other), "127.0.0.1")
        system = await run_check(grpc_cfg(srv.port, tls=True), "127.0.0.1")  # system roots
    for result in (wrong, system):
        assert result.error.startswith(f"gRPC check failed: 127.0.0.1:{srv.port}: UNAVAILABLE: ")
        assert "CERTIFICATE_VERIFY_FAILED" in result.error, result.error


async def test_tls_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    client = ca.issue_cert("healthd-client")
    ca_file = pem_file(tmp_path, "ca.pem", ca.cert_pem.bytes())
    cert = pem_file(tmp_path, "client.pem", client.cert_chain_pems[0].bytes())
    key = pem_file(tmp_path, "client.key", client.private_key_pem.bytes())
    with serving(credentials=server_tls(ca, client_ca=ca)) as srv:
        mutual = grpc_cfg(srv.port, tls=True, ca_file=ca_file, client_cert=cert, client_key=key)
        with_cert = await run_check(mutual, "127.0.0.1")
        without = await run_check(grpc_cfg(srv.port, tls=True, ca_file=ca_file), "127.0.0.1")
    assert with_cert.ok, with_cert.error
    assert without.error.startswith(f"gRPC check failed: 127.0.0.1:{srv.port}: UNAVAILABLE: ")


async def test_tls_and_plaintext_do_not_mix(ca: trustme.CA, tmp_path: Path) -> None:
    ca_file = pem_file(tmp_path, "ca.pem", ca.cert_pem.bytes())
    with serving() as plain:
        tls_to_plain = await run_check(
            grpc_cfg(plain.port, timeout=2.0, tls=True, ca_file=ca_file), "127.0.0.1"
        )
    with serving(credentials=server_tls(ca)) as secure:
        plain_to_tls = await run_check(grpc_cfg(secure.port, timeout=2.0), "127.0.0.1")
    assert not tls_to_plain.ok
    assert not plain_to_tls.ok
    assert "UNAVAILABLE" in tls_to_plain.error, tls_to_plain.error


async def test_a_ca_file_gone_since_loading_fails_the_check(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.pem")
    with serving() as srv:
        result = await run_check(grpc_cfg(srv.port, tls=True, ca_file=missing), "127.0.0.1")
    assert result.error == (
        f"gRPC check failed: 127.0.0.1:{srv.port}: cannot read ca_file {missing}: "
        "No such file or directory"
    )


# -- grpcio only when needed; the daemon ----------------------------------------------------------


def test_the_cli_does_not_import_grpc() -> None:
    out = subprocess.run(
        [PY, "-X", "importtime", "-m", "healthd", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert "healthd.checks.grpc" in imported  # the kind is registered...
    assert [m for m in imported if m.split(".")[0] in ("grpc", "grpc_health")] == []  # ...lazily


def grpc_loaded(pid: int) -> bool:
    """Whether grpcio's extension module is mapped into process ``pid``."""
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


def test_daemon_without_grpc_workloads_does_not_load_grpcio(daemon: DaemonProc) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        write(daemon, "web", "tcp", port=listener.getsockname()[1], host="127.0.0.1")
        daemon.start()
        api = connect(daemon)
        api.wait_status("web", lambda s: s["state"] == "healthy")
        assert not grpc_loaded(daemon.pid)


def test_daemon_follows_the_health_service(daemon: DaemonProc) -> None:
    with serving() as srv:
        write(daemon, "api", "grpc", port=srv.port, host="127.0.0.1", retries=1, timeout=2.0)
        daemon.start()
        client = connect(daemon)
        client.wait_status("api", lambda s: s["state"] == "healthy")
        assert grpc_loaded(daemon.pid)
        srv.health.set("", Status.NOT_SERVING)
        down = client.wait_status("api", lambda s: s["state"] == "unhealthy")
        assert down["last_error"] == (
            f"gRPC check failed: 127.0.0.1:{srv.port}: health status NOT_SERVING"
        )
        srv.health.set("", Status.SERVING)
        client.wait_status("api", lambda s: s["state"] == "healthy")
        assert daemon.terminate() == 0


# grpc core's own log lines (absl's format): "I1128 11:56:22.706400    3729 file.cc:2563] ..."
GRPC_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]+\] ", re.MULTILINE)


def test_grpc_core_writes_nothing_into_the_daemon_log(
    daemon: DaemonProc, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = pem_file(tmp_path, "ca.pem", ca.cert_pem.bytes())
    with serving() as plain:  # the check speaks TLS to it: grpc core logs the failed handshake
        common = {"port": plain.port, "host": "127.0.0.1", "retries": 1, "timeout": 2.0}
        write(daemon, "tls", "grpc", **common, tls=True, ca_file=ca_file)
        daemon.start()
        client = connect(daemon)
        down = client.wait_status("tls", lambda s: s["state"] == "unhealthy")
        assert "WRONG_VERSION_NUMBER" in down["last_error"], down  # the reason is in the error
        assert daemon.terminate() == 0
    assert GRPC_LOG_LINE.findall(daemon.log()) == []
