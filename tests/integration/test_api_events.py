"""The read side of events: GET /v1/events, the Server-Sent Events stream, GET /v1/sinks and
the event metrics, on the real daemon; and the HTTP server's streamed answers in-process with
a real journal, where the test controls every byte (flow control, disconnects, close).

Streams are read the way a client does: a socket, the chunked body decoded by hand, the SSE
messages parsed from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from healthd.api.app import Api
from healthd.api.auth import Authorizer
from healthd.api.http import HttpServer
from healthd.api.messages import HttpError, Limits, Peer, Request, Response, json_response
from healthd.api.stream import PIECE, EventStream
from healthd.config.daemon import DaemonSettings
from healthd.engine.daemon import Daemon
from healthd.events import EventBus
from healthd.logs import make_logger
from healthd.model import Event, EventType
from healthd.store.journal import FILENAME, Journal

from .harness import (
    ApiClient,
    DaemonProc,
    Services,
    connect,
    free_port,
    wait_for,
    with_token,
    write,
    write_token,
)

# -- an SSE client --------------------------------------------------------------------------------


@dataclass
class Message:
    """One SSE message: its fields (``data`` lines joined) and its comment lines."""

    fields: dict[str, str]
    comments: list[str]

    @property
    def id(self) -> int:
        return int(self.fields["id"])

    @property
    def event(self) -> dict[str, Any]:
        data = json.loads(self.fields["data"])
        assert isinstance(data, dict)
        return data


@dataclass
class Decoder:
    """A streamed body, fed as it arrives: chunked framing undone, SSE messages parsed."""

    chunked: bool = True
    raw: bytes = b""
    text: bytes = b""
    ended: bool = False  # the last chunk arrived

    def feed(self, data: bytes) -> list[Message]:
        if not self.chunked:
            self.text += data
        else:
            self.raw += data
            while not self.ended:
                size_line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                assert rest[size : size + 2] == b"\r\n", rest[: size + 2]
                self.text += rest[:size]
                self.raw = rest[size + 2 :]
                self.ended = size == 0
        out = []
        while b"\n\n" in self.text:
            block, self.text = self.text.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            comments = []
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = f"{fields[name]}\n{value}" if name in fields else value
            out.append(Message(fields, comments))
        return out


def split_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


class SseClient:
    """GET a stream on a socket of its own; ``next`` returns its messages one at a time."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        url = urllib.parse.urlsplit(base)
        self.sock = socket.create_connection((url.hostname or "", url.port or 80), timeout=10)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(65536)
            assert piece, f"closed before the head: {data!r}"
            data += piece
        self.status, self.headers, rest = split_head(data)
        self.decoder = Decoder()
        self.pending: list[Message] = []
        if self.status == 200:
            assert self.headers["transfer-encoding"] == "chunked", self.headers
            self.pending = self.decoder.feed(rest)

    def next(self, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no SSE message within {timeout}s")
            self.sock.settimeout(left)
            try:
                piece = self.sock.recv(65536)
            except TimeoutError:
                continue
            assert piece, "the stream ended"
            self.pending = self.decoder.feed(piece)
        return self.pending.pop(0)

    def events(
        self, until: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> list[Message]:
        """Messages with an event, up to and with the first that ``until`` accepts."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if "data" not in message.fields:
                continue
            out.append(message)
            if until(message.event):
                return out

    def ended_within(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` (EOF or reset)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                continue
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def sse(base: str, path: str, headers: dict[str, str] | None = None) -> Iterator[SseClient]:
    client = SseClient(base, path, headers)
    try:
        yield client
    finally:
        client.close()


def configure(daemon: DaemonProc, more: str = "") -> str:
    """The daemon config: an API token (POSTs over TCP need one), then ``more``. Returns the
    token."""
    if not more:
        return with_token(daemon)
    token = "events-test-token"
    token_file = write_token(daemon.daemon_config.with_name("api.token"), token)
    daemon.daemon_config.write_text(f"api:\n  token_file: {token_file}\n{more}")
    return token


def all_events(api: ApiClient, query: str = "", page: int = 1000) -> list[dict[str, Any]]:
    """Every event /v1/events has for ``query``, page by page through after_id."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        body = api.get(f"/v1/events?after_id={after}&limit={page}{query}")
        out.extend(body["events"])
        if len(body["events"]) < page:
            return out
        after = body["last_id"]


# -- the real daemon ------------------------------------------------------------------------------


def test_events_are_filtered_by_workload_type_and_time_and_paged_without_gaps(
    daemon: DaemonProc, services: Services
) -> None:
    web = services.start("http")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    # One check (at start): one check_fail and one unhealthy, then quiet.
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1, interval=3600)
    token = configure(daemon)
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("web", lambda s: s["state"] == "healthy")
    api.wait_status("db", lambda s: s["state"] == "unhealthy")
    api.post("/v1/workloads/db/pause", {"reason": "events test"})
    api.post("/v1/workloads/db/resume")
    # Shown once committed, a few milliseconds after it happened.
    wait_for("resumed in the journal", lambda: api.get("/v1/events?type=resumed")["events"])

    whole = api.get("/v1/events?limit=1000")
    events = whole["events"]
    ids = [e["id"] for e in events]
    assert ids == list(range(1, len(ids) + 1))  # every id once, in order, from the first
    assert whole["last_id"] == ids[-1]
    kinds = [(e["type"], e["workload"]) for e in events]
    for expected in [
        ("daemon_started", ""),
        ("check_fail", "db"),
        ("unhealthy", "db"),
        ("paused", "db"),
        ("resumed", "db"),
    ]:
        assert expected in kinds, kinds
    schema = api.get("/v1/openapi.json")["components"]["schemas"]["Event"]
    for e in events:
        assert set(schema["required"]) <= set(e) <= set(schema["properties"]), e
    unhealthy = next(e for e in events if e["type"] == "unhealthy")
    assert (unhealthy["state_from"], unhealthy["state_to"]) == ("starting", "unhealthy")
    assert unhealthy["host"] == socket.gethostname()
    assert set(unhealthy) == {
        "id",
        "type",
        "workload",
        "timestamp",
        "message",
        "host",
        "state_from",
        "state_to",
        "details",
    }

    # Paging two at a time through after_id/last_id gives the same events, none twice.
    assert all_events(api, page=2) == events
    # Past the end: nothing, and last_id stays where the journal ends.
    end = api.get(f"/v1/events?after_id={whole['last_id']}")
    assert end == {"events": [], "last_id": whole["last_id"]}

    by_db = api.get("/v1/events?workload=db")["events"]
    assert by_db == [e for e in events if e["workload"] == "db"]
    assert {e["type"] for e in by_db} >= {"check_fail", "unhealthy", "paused", "resumed"}
    daemon_own = api.get("/v1/events?workload=")["events"]
    assert daemon_own == [e for e in events if e["workload"] == ""]
    assert api.get("/v1/events?workload=nobody") == {"events": [], "last_id": ids[-1]}

    wanted = {"unhealthy", "paused"}
    of_types = [e for e in events if e["type"] in wanted]
    assert api.get("/v1/events?type=unhealthy&type=paused")["events"] == of_types
    assert api.get("/v1/events?type=unhealthy,paused")["events"] == of_types
    assert api.get("/v1/events?type=paused&workload=db")["events"] == [
        e for e in events if e["type"] == "paused"
    ]

    # A filtered page: last_id moves past what did not match, so polling goes on from there.
    first_unhealthy = api.get("/v1/events?type=unhealthy&limit=1")
    assert first_unhealthy["last_id"] == first_unhealthy["events"][0]["id"]
    assert api.get(f"/v1/events?type=daemon_started&after_id={ids[0]}")["last_id"] == ids[-1]

    assert api.get("/v1/events?since=1h")["events"] == events
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.get(f"/v1/events?since={future}")["events"] == []
    middle = events[len(events) // 2]
    since = urllib.parse.quote(middle["timestamp"])
    assert api.get(f"/v1/events?since={since}")["events"] == [
        e for e in events if e["timestamp"] >= middle["timestamp"]
    ]
    assert api.get("/v1/events?limit=3")["events"] == events[:3]

    for bad in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "after_id=-1",
        "after_id=1.5",
        "after_id=99999999999999999999",
        "type=bogus",
        "type=healthy,",
        "since=yesterday",
        "since=-1h",
        "since=0",
        "since=2026-13-01T00:00:00Z",
    ):
        reply = api.call("GET", f"/v1/events?{bad}")
        assert reply.status == 400, (bad, reply.text)
        assert reply.error()["message"], bad
    assert "event=api_handler_failed" not in daemon.log()
    assert daemon.terminate() == 0


def test_the_stream_sends_live_events_and_resumes_from_last_event_id_with_no_gap(
    daemon: DaemonProc, services: Services
) -> None:
    web = services.start("http")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    token = configure(daemon)
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("web", lambda s: s["state"] == "healthy")
    url = daemon.api_url()

    with sse(url, "/v1/events/stream") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.next().fields == {"retry": "2000"}
        web.kill()  # for real: SIGKILL to its process group
        first = stream.events(lambda e: e["type"] == "unhealthy" and e["workload"] == "web")
    for message in first:
        assert message.fields["event"] == message.event["type"]
        assert message.id == message.event["id"]
    assert [m.event["type"] for m in first][-2:] == ["check_fail", "unhealthy"]
    seen = [m.id for m in first]
    last = seen[-1]

    # Disconnected: events go on happening.
    api.post("/v1/workloads/web/pause", {"reason": "while nobody watches"})
    api.post("/v1/workloads/web/resume")
    subprocess.run(web.start_argv(), env=services.env, check=True, timeout=30)
    api.wait_status("web", lambda s: s["state"] == "healthy")
    missed = all_events(api, f"&after_id={last}")  # what the journal has after ``last``
    assert {e["type"] for e in missed} >= {"paused", "resumed", "healthy"}

    with sse(url, "/v1/events/stream", {"Last-Event-ID": str(last)}) as stream:
        assert stream.next().fields == {"retry": "2000"}
        replayed = stream.events(lambda e: e["id"] == missed[-1]["id"])
        assert [m.event for m in replayed] == missed  # exactly the missed ones, whole
        api.post("/v1/workloads/web/pause")  # and then live again
        (live,) = stream.events(lambda e: e["type"] == "paused")
    seen += [m.id for m in replayed] + [live.id]
    # From the first event this client saw to the last: every id exactly once, in order.
    assert seen == list(range(seen[0], seen[-1] + 1))
    assert live.event == all_events(api)[-1]
    assert live.event["workload"] == "web"
    assert daemon.terminate() == 0


def test_the_stream_filters_by_workload_and_type_and_replays_from_after_id(
    daemon: DaemonProc,
) -> None:
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1)  # check_fail often
    write(daemon, "cache", "tcp", port=free_port(), host="127.0.0.1", retries=1)
    token = configure(daemon)
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("db", lambda s: s["state"] == "unhealthy")
    api.wait_status("cache", lambda s: s["state"] == "unhealthy")
    url = daemon.api_url()
    api.post("/v1/workloads/cache/pause")
    api.post("/v1/workloads/db/pause", {"reason": "before"})

    def paused_db() -> list[dict[str, Any]]:
        return [e for e in all_events(api) if e["type"] == "paused" and e["workload"] == "db"]

    before = wait_for("db's pause in the journal", paused_db)

    path = "/v1/events/stream?after_id=0&workload=db&type=paused,resumed"
    with sse(url, path) as stream:
        stream.next()  # retry
        replayed = stream.events(lambda e: e["id"] == before[-1]["id"])
        assert [m.event for m in replayed] == before
        api.post("/v1/workloads/cache/resume")  # another workload: not for this stream
        api.post("/v1/workloads/db/resume")
        (resumed,) = stream.events(lambda e: True)
        assert (resumed.event["type"], resumed.event["workload"]) == ("resumed", "db")
        # Between: many check_fail events of db, and cache's own: none of them came.
        newer = all_events(api, f"&after_id={replayed[-1].id}")
        assert {e["type"] for e in newer if e["id"] < resumed.id} >= {"check_fail", "resumed"}

    with sse(url, "/v1/events/stream?type=nonsense") as refused:
        assert refused.status == 400
    with sse(url, "/v1/events/stream", {"Last-Event-ID": "x"}) as refused:
        assert refused.status == 400
    assert daemon.terminate() == 0


def test_stopping_the_daemon_ends_its_streams_at_once(daemon: DaemonProc) -> None:
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1, interval=3600)
    daemon.start()
    connect(daemon)
    with sse(daemon.api_url(), "/v1/events/stream") as stream:
        stream.next()
        start = time.monotonic()
        assert daemon.terminate(timeout=10) == 0
        assert stream.ended_within(5)
        assert time.monotonic() - start < 5


def test_sinks_show_a_receiver_that_is_down_pending_with_its_error_and_no_secrets(
    daemon: DaemonProc, require_binary: Callable[[str], str]
) -> None:
    promtool = require_binary("promtool")
    closed = free_port()
    more = (
        "sinks:\n"
        "  - name: ops\n"
        "    type: webhook\n"
        f"    url: http://user:pass-word@127.0.0.1:{closed}/hook?token=s3cret\n"
        "    headers: {X-Api-Key: hunter2}\n"
        "    events: [unhealthy, paused, resumed, daemon_started]\n"
        "    timeout: 1s\n"
        "  - name: page\n"
        "    type: command\n"
        "    command: [/bin/true, --secret-arg]\n"
        "    workloads: [db]\n"
    )
    write(daemon, "db", "tcp", port=free_port(), host="127.0.0.1", retries=1, interval=3600)
    token = configure(daemon, more)
    daemon.start()
    api = connect(daemon, token)
    api.wait_status("db", lambda s: s["state"] == "unhealthy")

    def sink(name: str) -> dict[str, Any]:
        reply = api.call("GET", "/v1/sinks")
        assert reply.status == 200, reply.text
        for secret in ("pass-word", "s3cret", "hunter2", "--secret-arg"):
            assert secret not in reply.text
        found: list[dict[str, Any]] = [s for s in reply.body["sinks"] if s["name"] == name]
        assert len(found) == 1
        return found[0]

    def failing() -> dict[str, Any] | None:
        s = sink("ops")
        # daemon_started and db's unhealthy wait: the first, retried, holds back the next
        return s if s["last_error"] and s["retries"] >= 1 and s["pending"] == 2 else None

    ops = wait_for("failed attempts", failing)
    # Every entry has the fields the OpenAPI document promises, and no others.
    schema = api.get("/v1/openapi.json")["components"]["schemas"]["Sink"]
    for entry in api.get("/v1/sinks")["sinks"]:
        assert set(schema["required"]) <= set(entry) <= set(schema["properties"]), entry
        assert set(entry["since_start"]) == set(schema["properties"]["since_start"]["required"])
    assert ops["type"] == "webhook"
    assert ops["url"] == f"http://127.0.0.1:{closed}/hook"
    assert ops["headers"] == ["X-Api-Key"]
    assert ops["events"] == ["unhealthy", "paused", "resumed", "daemon_started"]
    assert ops["workloads"] is None
    assert (ops["delivered"], ops["failed"], ops["expired"]) == (0, 0, 0)
    assert ops["last_delivered"] is None

    api.post("/v1/workloads/db/pause")
    api.post("/v1/workloads/db/resume")
    grown = wait_for("the outbox to grow", lambda: (s := sink("ops"))["pending"] == 4 and s)
    assert grown["delivered"] == 0

    page = wait_for("the command sink to deliver", lambda: (s := sink("page"))["delivered"] and s)
    assert page["command"] == "/bin/true"
    assert "url" not in page
    assert page["workloads"] == ["db"]
    assert page["last_delivered"] is not None
    assert page["since_start"]["delivered"] == page["delivered"]

    body = api.call("GET", "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(body)}
    outcomes = {
        (s.labels["sink"], s.labels["outcome"]): s.value
        for s in families["healthd_event_deliveries"].samples
    }
    assert outcomes[("ops", "delivered")] == 0
    assert outcomes[("ops", "retry")] >= 1
    assert outcomes[("page", "delivered")] >= 1
    assert {o for _, o in outcomes} == {"delivered", "failed", "expired", "suppressed", "retry"}
    pending = {s.labels["sink"]: s.value for s in families["healthd_outbox_pending"].samples}
    assert pending["ops"] >= 4
    assert pending["page"] >= 0
    committed = {s.labels["type"]: s.value for s in families["healthd_events"].samples}
    assert committed["unhealthy"] == 1
    assert committed["paused"] == committed["resumed"] == 1
    assert committed["daemon_started"] == 1
    assert set(committed) == {t.value for t in EventType}
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (lint.returncode, lint.stderr) == (0, ""), f"{lint.stdout}{lint.stderr}"
    assert daemon.terminate() == 0


# -- streamed answers in-process: the HTTP server and a real journal ---------------------------


@dataclass
class StreamApp:
    """The handler: ``/stream`` streams the journal (``?max=``, ``?keepalive=``, Last-Event-ID
    as the API reads them); ``/finite`` and ``/broken`` are streams of their own; anything
    else answers JSON."""

    journal: Journal
    streams: list[EventStream] = field(default_factory=list)

    async def __call__(self, request: Request) -> Response:
        if request.path == "/finite":
            return Response(200, content_type="text/plain", stream=pieces([b"one ", b"", b"two"]))
        if request.path == "/broken":
            return Response(200, content_type="text/plain", stream=pieces([b"partial"], fail=True))
        if request.path != "/stream":
            return json_response(200, {"path": request.path})
        after = request.headers.get("last-event-id")
        stream = EventStream(
            self.journal,
            int(after) if after is not None else None,
            keepalive=float(request.query.get("keepalive", ["15"])[0]),
            max_queued=int(request.query.get("max", ["1000"])[0]),
        )
        self.streams.append(stream)
        return Response(200, content_type="text/event-stream", stream=stream.chunks())


async def pieces(parts: list[bytes], *, fail: bool = False) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part
    if fail:
        raise RuntimeError("a stream's bug")


@dataclass
class Served:
    server: HttpServer
    app: StreamApp
    journal: Journal
    port: int
    log: io.StringIO

    def listeners(self) -> int:
        return len(self.journal._listeners)


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, limits: Limits | None = None) -> AsyncIterator[Served]:
    journal = Journal(tmp_path / FILENAME, host="test")
    journal.open()
    log = io.StringIO()
    app = StreamApp(journal)
    server = HttpServer(app, log=make_logger(stream=log), limits=limits or Limits())
    _, port = await server.listen_tcp("127.0.0.1", 0)
    try:
        yield Served(server, app, journal, port, log)
    finally:
        await server.close()
        journal.close()


async def publish(journal: Journal, count: int, size: int = 0) -> None:
    """``count`` events committed (``size`` bytes of details each), a few hundred a batch."""
    for start in range(0, count, 200):
        for n in range(start, min(count, start + 200)):
            journal.append(
                Event(
                    EventType.CHECK_FAIL,
                    f"w{n % 7}",
                    datetime.now(UTC),
                    f"event {n}",
                    details={"pad": "x" * size},
                )
            )
        await journal.flush()


class AsyncStream:
    """The SSE client above, on asyncio streams (the server runs in this loop)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()
        self.pending: list[Message] = []
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(
        cls, port: int, request: bytes, *, rcvbuf: int | None = None, head: bool = True
    ) -> AsyncStream:
        sock = socket.socket()
        if rcvbuf is not None:  # before connecting: the window is agreed then
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        client = cls(*await asyncio.open_connection(sock=sock))
        client.writer.write(request)
        if head:
            raw = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
            client.status, client.headers, _ = split_head(raw)
            client.decoder.chunked = client.headers.get("transfer-encoding") == "chunked"
        return client

    async def next(self, timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            while not self.pending:
                piece = await self.reader.read(65536)
                assert piece, "the stream ended"
                self.pending = self.decoder.feed(piece)
        return self.pending.pop(0)

    async def ids(self, count: int, timeout: float = 30.0) -> list[int]:
        out: list[int] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                message = await self.next(timeout)
                if "id" in message.fields:
                    out.append(message.id)
        return out

    async def rest(self, timeout: float = 5.0) -> bytes:
        """What comes until the server ends the connection (EOF or reset)."""
        data = b""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while piece := await self.reader.read(65536):
                    data += piece
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def opened(
    port: int, request: bytes, *, rcvbuf: int | None = None
) -> AsyncIterator[AsyncStream]:
    client = await AsyncStream.open(port, request, rcvbuf=rcvbuf)
    try:
        yield client
    finally:
        await client.close()


STREAM = b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n"


def stream_request(*extra: str, path: str = "/stream", method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: t", *extra]) + "\r\n\r\n").encode()


async def until(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout}s waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_finite_stream_is_chunked_and_the_connection_goes_on(tmp_path: Path) -> None:
    async with serve(tmp_path) as s, opened(s.port, stream_request(path="/finite")) as client:
        assert client.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in client.headers
        # The empty piece is not sent: it would end the body early.
        body = await client.reader.readuntil(b"0\r\n\r\n")
        assert body == b"4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n"
        client.writer.write(stream_request(path="/after"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert split_head(head)[0] == 200


async def test_head_of_a_stream_sends_its_headers_only_and_never_subscribes(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as s:
        base = s.listeners()
        async with opened(s.port, stream_request(method="HEAD")) as client:
            assert client.status == 200
            assert client.headers["content-type"] == "text/event-stream"
            client.writer.write(stream_request(path="/after"))  # nothing came between
            head = await client.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert s.listeners() == base


async def test_an_http_1_0_client_gets_the_stream_unframed_until_the_close(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as s, opened(s.port, b"GET /stream HTTP/1.0\r\n\r\n") as client:
        assert "transfer-encoding" not in client.headers
        assert "content-length" not in client.headers
        assert client.headers["connection"] == "close"
        assert (await client.next()).fields == {"retry": "2000"}
        await publish(s.journal, 1)
        assert (await client.next()).id == 1


async def test_a_stream_that_raises_cuts_its_answer_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as s:
        async with opened(s.port, stream_request(path="/broken")) as client:
            rest = await client.rest()
        assert rest == b"7\r\npartial\r\n"  # no last chunk: the client knows it is cut short
        assert "event=api_stream_failed" in s.log.getvalue()
        async with opened(s.port, stream_request(path="/finite")) as again:
            assert again.status == 200


async def test_a_client_that_goes_away_is_unsubscribed_at_once(tmp_path: Path) -> None:
    async with serve(tmp_path) as s:
        base = s.listeners()
        async with opened(s.port, STREAM) as client:
            await client.next()
            assert s.listeners() == base + 1
        await until(
            "the stream and its listener to go",
            lambda: s.listeners() == base and not s.server.connections,
            timeout=2,
        )


async def test_closing_the_server_ends_every_stream_at_once(tmp_path: Path) -> None:
    async with serve(tmp_path) as s, contextlib.AsyncExitStack() as stack:
        base = s.listeners()
        clients = [await stack.enter_async_context(opened(s.port, STREAM)) for _ in range(3)]
        for client in clients:
            await client.next()
        assert s.listeners() == base + 3
        start = time.monotonic()
        await s.server.close()
        for client in clients:
            await client.rest(timeout=2)
        assert time.monotonic() - start < 2
        await until("the streams' listeners to go", lambda: s.listeners() == base, timeout=2)


async def test_a_quiet_stream_outlives_the_idle_timeout(tmp_path: Path) -> None:
    async with serve(tmp_path, Limits(idle_timeout=0.2)) as s, opened(s.port, STREAM) as client:
        assert (await client.next()).fields == {"retry": "2000"}
        await asyncio.sleep(0.8)  # four idle timeouts without a byte either way
        await publish(s.journal, 1)
        assert (await client.next()).id == 1


async def test_a_quiet_stream_sends_keepalive_comments(tmp_path: Path) -> None:
    async with (
        serve(tmp_path) as s,
        opened(s.port, stream_request(path="/stream?keepalive=0.1")) as client,
    ):
        assert (await client.next()).fields == {"retry": "2000"}
        quiet = await client.next(timeout=2)
        assert (quiet.fields, quiet.comments) == ({}, ["keepalive"])
        await publish(s.journal, 1)
        message = await client.next()
        while not message.fields:  # keepalives may come before
            message = await client.next()
        assert message.id == 1


async def test_resuming_replays_page_after_page_then_goes_live_with_no_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as s:
        await publish(s.journal, 1300)  # more than two replay pages
        async with opened(s.port, stream_request("Last-Event-ID: 100")) as client:
            # Commits go on while it replays: each must come once, in its place.
            more = asyncio.get_running_loop().create_task(publish(s.journal, 700))
            ids = await client.ids(1900)
            await more
            assert ids == list(range(101, 2001))
            await publish(s.journal, 1)
            assert await client.ids(1) == [2001]


async def test_a_last_event_id_beyond_the_journal_replays_it_from_the_start(
    tmp_path: Path,
) -> None:
    """The journal was replaced (moved aside as unusable) and counts from 1 again: the client
    gets all of the new one rather than nothing until the ids catch up."""
    async with serve(tmp_path) as s:
        await publish(s.journal, 3)
        async with opened(s.port, stream_request("Last-Event-ID: 5000")) as client:
            assert await client.ids(3) == [1, 2, 3]


async def test_a_client_that_stops_reading_is_bounded_then_served_from_the_journal(
    tmp_path: Path,
) -> None:
    request = stream_request(path="/stream?max=20")
    async with serve(tmp_path) as s, opened(s.port, request, rcvbuf=4096) as client:
        assert (await client.next()).fields == {"retry": "2000"}
        (conn,) = s.server.connections
        assert conn.transport is not None
        # The client reads nothing while 3,000 events of 2 kB (6 MB) are committed.
        await publish(s.journal, 3000, size=2000)
        await until("the server to stop writing", lambda: not conn.writable.is_set())
        (stream,) = s.app.streams
        assert stream.overflows >= 1  # the queue was dropped, not grown: at most 20 events
        # Memory held for it: the transport's buffer, one piece over its high-water mark.
        high = Limits().stream_write_high_water
        assert conn.transport.get_write_buffer_size() < high + PIECE + 4096
        ids = await client.ids(3000, timeout=60)
        assert ids == list(range(1, 3001))  # read late, from the journal: every one, in order


async def test_a_client_that_reads_nothing_is_dropped_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    request = stream_request(path="/stream?max=20")
    async with serve(tmp_path, Limits(idle_timeout=0.5)) as s:
        base = s.listeners()
        async with opened(s.port, request, rcvbuf=4096):
            await publish(s.journal, 3000, size=2000)
            await until(
                "the stream to be dropped",
                lambda: s.listeners() == base and not s.server.connections,
                timeout=5,
            )


async def trickle(journal: Journal, every: float, size: int, until: Callable[[], bool]) -> None:
    """One event of ``size`` bytes every ``every`` seconds, until ``until()`` (at most 10 s)."""
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        await publish(journal, 1, size=size)
        await asyncio.sleep(every)


async def open_stream(s: Served, where: str, rcvbuf: int) -> socket.socket:
    """A stream requested on the TCP listener or on the Unix socket ``where``, from a socket
    with a ``rcvbuf`` receive buffer that nothing reads (not even an asyncio stream)."""
    family = socket.AF_INET if where == "tcp" else socket.AF_UNIX
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    address = ("127.0.0.1", s.port) if where == "tcp" else where
    await asyncio.get_running_loop().sock_connect(sock, address)
    await asyncio.get_running_loop().sock_sendall(sock, STREAM)
    return sock


@pytest.mark.parametrize("listener", ["tcp", "unix"])
async def test_a_trickle_to_a_client_that_reads_nothing_is_dropped_after_the_idle_timeout(
    tmp_path: Path, listener: str
) -> None:
    """Events too few to fill the buffers for a long while (40 kB/s): the client is dropped
    for taking none of them, not once they are full (before: 2.7 MB of kernel buffer first
    on TCP, ~270 kB on a Unix socket), and with a reset, which frees them."""
    limits = Limits(idle_timeout=1.0, stall_check_interval=0.25)
    async with serve(tmp_path, limits) as s:
        where = "tcp" if listener == "tcp" else str(tmp_path / "api.sock")
        if listener == "unix":
            await s.server.listen_unix(Path(where))
        client = await open_stream(s, where, rcvbuf=4096)
        try:
            await until("the stream to start", lambda: bool(s.server.connections))
            (conn,) = s.server.connections
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            start = time.monotonic()
            await trickle(s.journal, 0.05, 2000, lambda: not s.server.connections)
            elapsed = time.monotonic() - start
            # 1 s after its small receive buffer filled (at once), one check later at most
            assert not s.server.connections, "still connected after 10 s"
            assert elapsed < 2.5, elapsed
            assert sock.fileno() == -1  # closed, not left to deliver what it was sent
            if listener == "tcp":  # reset: it knows, and nothing waits to be delivered
                err = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                assert err == errno.ECONNRESET, os.strerror(err)
        finally:
            client.close()


async def test_a_slow_reader_on_the_unix_socket_is_served_all_along(tmp_path: Path) -> None:
    """On a Unix socket the kernel counts what the peer has not read in memory, not bytes:
    a client that reads half as fast as events come must still count as taking them."""
    limits = Limits(idle_timeout=1.0, stall_check_interval=0.25)
    async with serve(tmp_path, limits) as s:
        path = tmp_path / "api.sock"
        await s.server.listen_unix(path)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        await loop.sock_sendall(sock, stream_request(path="/stream?max=20"))
        arrivals: list[float] = []
        stop = asyncio.Event()

        async def read_slowly() -> None:
            # Straight from the socket, 4 kB at a time: no stream's buffer reads ahead.
            while not stop.is_set():
                data = await loop.sock_recv(sock, 4096)
                assert data, "the daemon closed the stream"
                arrivals.extend(time.monotonic() for _ in range(data.count(b"\nid: ")))
                await asyncio.sleep(0.04)  # ~100 kB/s

        task = loop.create_task(read_slowly())
        start = time.monotonic()
        try:
            until_done = lambda: time.monotonic() - start > 5 or task.done()  # noqa: E731
            await trickle(s.journal, 0.02, 4000, until_done)
            stop.set()
            await task
        finally:
            task.cancel()
            sock.close()
        assert len(s.app.streams) == 1
        (stream,) = s.app.streams
        assert stream.overflows >= 1  # it did fall behind
        for second in range(5):  # and still got events every second
            assert any(0 <= t - start - second < 1 for t in arrivals), (second, len(arrivals))


async def test_a_daemon_without_a_journal_answers_503_for_events_and_still_serves_metrics(
    tmp_path: Path,
) -> None:
    log = make_logger(stream=io.StringIO())
    settings = DaemonSettings(config_dir=tmp_path / "config", status_dir=tmp_path / "status")
    daemon = Daemon(settings, bus=EventBus(log), log=log)  # no notifier: no journal
    daemon.load()
    daemon.started.set()
    api = Api(daemon, Authorizer(None, loopback=True))
    peer = Peer(unix=False, host="127.0.0.1")
    for path in ("/v1/events", "/v1/events/stream", "/v1/sinks"):
        with pytest.raises(HttpError) as refused:
            await api(Request("GET", path, {}, {}, b"", peer, "tcp"))
        assert refused.value.status == 503, path
        assert "no event journal" in refused.value.message
    scrape = await api(Request("GET", "/metrics", {}, {}, b"", peer, "tcp"))
    assert scrape.status == 200
    families = {f.name for f in text_string_to_metric_families(scrape.body.decode())}
    assert "healthd_events" not in families  # nothing to count: left out, not zero
    assert "healthd_workload_up" in families
