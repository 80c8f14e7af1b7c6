"""HTTP servers that each do one odd thing a real client handles, and the verdict healthd gives.

Found by trying healthd against a peer prober's HTTP test suite and the edge cases a careful
operator tries: interim 1xx responses before the answer, a 101 nobody asked for, a body that
ends before its Content-Length or its last chunk, bare LF line endings, a TLS handshake cut
short. Each test starts a loopback server (asyncio, a port from the OS) that writes exactly
the bytes of that case, and checks what the probe says.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from healthd.config.loader import parse_text
from healthd.config.workload import WorkloadConfig

from .test_http_options import check, checks_on_one_probe

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstatus ok"


@dataclass
class Scripted:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@contextlib.asynccontextmanager
async def scripted(
    answer: bytes | Script, *, tls: ssl.SSLContext | None = None, keep: bool = False
) -> AsyncIterator[Scripted]:
    """A server that reads each request whole, then writes ``answer`` (or runs it), then
    closes the connection (cleanly: nothing unread, so a FIN, not a reset); with ``keep``
    it answers every request of the connection, until the client closes."""
    info = Scripted(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        try:
            while True:
                info.requests.append(await read_head(reader))
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(reader, writer)
                if not keep:
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Tls:
    ca_file: Path
    server: ssl.SSLContext


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return Tls(ca_file, context)


def cfg_for(port: int, **options: Any) -> WorkloadConfig:
    values: dict[str, Any] = {"timeout": 2.0} | options
    return WorkloadConfig(workload="w", type="http", port=port, **values).with_defaults()


def body_regex(pattern: str) -> dict[str, Any]:
    """``body_regex``, compiled as the config loader compiles it."""
    cfg, problems = parse_text(f"workload: w\ntype: http\nbody_regex: '{pattern}'\n", "w.yaml", "w")
    assert cfg is not None, problems
    return {"body_regex": cfg.body_regex}


# The configurations a response goes through: the plain probe, the judged one (a status list
# and a body matcher, or a regex), HEAD (which ends at the headers)
JUDGED = {"expected_status": ((200, 204),), "body_contains": "status ok"}
PROBES = {
    "plain": {},
    "judged": JUDGED,
    "regex": body_regex("^status"),
    "head": {"method": "HEAD"},
}


# -- interim responses (RFC 9110 15.2) -------------------------------------------------------------


@pytest.mark.parametrize("probe", list(PROBES))
@pytest.mark.parametrize(
    "interim",
    [EARLY_HINTS, CONTINUE, CONTINUE + EARLY_HINTS + EARLY_HINTS],
    ids=["103", "100", "100-103-103"],
)
async def test_interim_responses_are_read_past_to_the_answer(probe: str, interim: bytes) -> None:
    async with scripted(interim + OK) as srv:
        result = await check(cfg_for(srv.port, **PROBES[probe]))
    assert result.ok, result.error
    assert result.note == ""


async def test_interim_responses_over_https(tls: Tls) -> None:
    async with scripted(EARLY_HINTS + OK, tls=tls.server) as srv:
        for options in ({}, JUDGED):
            cfg = cfg_for(srv.port, scheme="https", ca_file=str(tls.ca_file), **options)
            result = await check(cfg)
            assert result.ok, result.error
    assert srv.connections == 2


async def test_an_interim_response_on_a_kept_connection_leaves_it_usable() -> None:
    async with scripted(EARLY_HINTS + OK, keep=True) as srv:
        results = await checks_on_one_probe(cfg_for(srv.port, keep_alive=True, **JUDGED), 3)
    assert [r.ok for r in results] == [True] * 3, [r.error for r in results]
    assert srv.connections == 1
    assert len(srv.requests) == 3


async def test_a_final_1xx_with_no_answer_after_it_is_not_taken_for_the_answer() -> None:
    async with scripted(EARLY_HINTS) as srv:  # then the server closes
        result = await check(cfg_for(srv.port))
    assert not result.ok
    assert result.error == (
        f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: "
        "connection closed before a response"
    )


@pytest.mark.parametrize("probe", list(PROBES))
async def test_a_101_nobody_asked_for_fails_and_says_so(probe: str) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x05hello"
    )
    async with scripted(switch) as srv:
        result = await check(cfg_for(srv.port, **PROBES[probe]))
    assert not result.ok
    assert result.error == (
        f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: the server answered 101 "
        "Switching Protocols to a request that did not ask to switch protocols"
    )


# -- bodies that end before they say they do (RFC 9112 8) -----------------------------------------

SHORT_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus ok!!!"  # 12 of 100
SHORT_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nstatus ok!!!\r\n"


@pytest.mark.parametrize("probe", ["judged", "regex"])
@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        (SHORT_LENGTH, "12 of 100 bytes"),
        (SHORT_CHUNKED, "12 bytes of a chunked body, without its last chunk"),
    ],
    ids=["content-length", "chunked"],
)
async def test_a_truncated_body_fails_a_matcher_even_when_the_part_that_came_matches(
    probe: str, answer: bytes, missing: str
) -> None:
    async with scripted(answer) as srv:  # the server closes after these bytes
        result = await check(cfg_for(srv.port, **PROBES[probe]))
    assert not result.ok
    assert result.error == (
        f"HTTP 200 from http://127.0.0.1:{srv.port}/healthz: body truncated: {missing}"
    )
    assert result.duration < 1.0  # at the close, not at the deadline


@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        (SHORT_LENGTH, "12 of 100 bytes"),
        (SHORT_CHUNKED, "12 bytes of a chunked body, without its last chunk"),
    ],
    ids=["content-length", "chunked"],
)
async def test_without_a_matcher_the_status_decides_and_the_result_says_what_was_cut(
    answer: bytes, missing: str
) -> None:
    async with scripted(answer) as srv:
        result = await check(cfg_for(srv.port))
    assert result.ok, result.error
    assert result.note == f"body truncated: {missing}"


async def test_a_body_that_ends_with_the_close_is_whole() -> None:
    # no Content-Length, not chunked: the close is the body's end (RFC 9112 6.3)
    async with scripted(b"HTTP/1.1 200 OK\r\n\r\nstatus ok") as srv:
        plain = await check(cfg_for(srv.port))
        judged = await check(cfg_for(srv.port, **JUDGED))
    assert (plain.ok, plain.note) == (True, "")
    assert (judged.ok, judged.note) == (True, ""), judged.error


async def test_a_body_reset_midway_is_noted_when_the_status_decides() -> None:
    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SHORT_LENGTH)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with scripted(reset_midway) as srv:
        result = await check(cfg_for(srv.port))
        judged = await check(cfg_for(srv.port, **JUDGED))
    assert result.ok, result.error
    assert result.note == "body cut by connection reset by peer: 12 of 100 bytes"
    assert judged.error == (
        f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: connection lost while "
        "reading the body: connection reset by peer"
    )


async def test_a_body_stalled_past_the_deadline_is_noted_when_the_status_decides() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SHORT_LENGTH)
        await writer.drain()
        await reader.read()  # until the client hangs up

    async with scripted(stall) as srv:
        result = await check(cfg_for(srv.port, timeout=0.5))
    assert result.ok, result.error
    assert result.note == "body unfinished at the deadline: 12 of 100 bytes"


# -- bare LF line endings (RFC 9112 2.2) -----------------------------------------------------------


@pytest.mark.parametrize("probe", list(PROBES))
async def test_bare_lf_in_the_status_line_and_headers_is_read_as_curl_and_go_read_it(
    probe: str,
) -> None:
    answer = b"HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 9\n\nstatus ok"
    async with scripted(answer) as srv:
        result = await check(cfg_for(srv.port, **PROBES[probe]))
    assert result.ok, result.error


async def test_bare_lf_keeps_its_status_and_body_for_the_error() -> None:
    answer = b"HTTP/1.1 503 Service Unavailable\nContent-Length: 11\n\nmaintenance"
    async with scripted(answer) as srv:
        result = await check(cfg_for(srv.port))
    assert result.error == f"HTTP 503 from http://127.0.0.1:{srv.port}/healthz: maintenance"


async def test_bare_lf_in_chunk_framing_is_refused_with_the_reason() -> None:
    answer = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n9\nstatus ok\n0\n\n"
    async with scripted(answer) as srv:
        result = await check(cfg_for(srv.port, **JUDGED))
    assert not result.ok
    assert result.error == (
        f"HTTP check failed: http://127.0.0.1:{srv.port}/healthz: malformed HTTP response: "
        "Expected LF after chunk size"
    )


# -- a TLS handshake cut short ------------------------------------------------------------------


async def hello_then(*, reset: bool) -> AsyncIterator[int]:
    """A TCP server that reads the ClientHello, then resets or closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(5)  # TLS record header: type, version, length
        await reader.readexactly(int.from_bytes(header[3:5], "big"))
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("reset", "words"),
    [
        (True, "connection reset during the TLS handshake"),
        (False, "connection closed by the server during the TLS handshake"),
    ],
    ids=["reset", "closed"],
)
async def test_a_handshake_cut_short_says_so_in_words(reset: bool, words: str) -> None:
    async with contextlib.asynccontextmanager(hello_then)(reset=reset) as port:
        result = await check(cfg_for(port, scheme="https", tls_skip_verify=True))
    assert result.error == f"HTTP check failed: https://127.0.0.1:{port}/healthz: {words}"
