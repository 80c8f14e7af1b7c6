"""The webhook sink end to end: the real daemon, real workloads, and a real HTTP receiver on
loopback (written here) that records every request and can answer 200/4xx/5xx, hang, or be
down for a while. What the daemon committed is read from events.db with sqlite3, read-only,
and compared with what arrived."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import http.server
import io
import itertools
import json
import select
import socket
import ssl
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from healthd import __version__
from healthd.config.sinks import SinkSettings
from healthd.logs import make_logger
from healthd.model import Event, EventType, State
from healthd.sinks import DeliveryError
from healthd.sinks.webhook import WebhookSink

from .harness import DaemonProc, Services, deliveries, free_port, wait_for, write

HANG = "hang"
Answer = int | tuple[int, str] | str  # a status, a status and a body, or HANG


# -- the receiver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered; 0: it hung
    at: float = dataclasses.field(default_factory=time.monotonic)  # when it came

    def json(self) -> dict[str, Any]:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed

    @property
    def event_id(self) -> int:
        return int(self.json()["id"])


class Receiver:
    """A webhook receiver on 127.0.0.1 (HTTP/1.1, keep-alive) in threads of this process.

    Each request is answered with the next of ``answers``, then ``default``. ``stop`` closes
    the listener and every open connection (a receiver that is down, not one that still
    serves the connections it had); ``start`` listens again on the same port."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.requests: list[Received] = []
        self.answers: deque[Answer] = deque()
        self.default: Answer = 200
        self.cut = 0  # hung requests whose client gave up and closed the connection
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    # -- control (test thread) ----------------------------------------------------------------

    def start(self) -> Receiver:
        assert self._server is None
        self._stopping.clear()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    def answer(self, *answers: Answer) -> None:
        with self._lock:
            self.answers.extend(answers)

    def got(self, path: str | None = None) -> list[Received]:
        """The requests answered 2xx (to ``path``, if given): the deliveries."""
        with self._lock:
            return [
                r
                for r in self.requests
                if 200 <= r.status < 300 and (path is None or r.path == path)
            ]

    def all_requests(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def ids(self, path: str | None = None) -> list[int]:
        return [r.event_id for r in self.got(path)]

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r.json() for r in self.got(path)]

    # -- serving (handler threads) -----------------------------------------------------------

    def _next_answer(self) -> Answer:
        with self._lock:
            return self.answers.popleft() if self.answers else self.default

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def _hang(self, conn: socket.socket) -> None:
        """Answer nothing; return when the client closes the connection (counted) or the
        receiver stops."""
        while not self._stopping.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if readable:
                try:
                    gone = conn.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    with self._lock:
                        self.cut += 1
                    return

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def finish(self) -> None:
                with receiver._lock:
                    receiver._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._next_answer()
                if answer == HANG:
                    receiver._record(Received(self.path, headers, body, 0))
                    receiver._hang(self.connection)
                    self.close_connection = True
                    return
                status, text = answer if isinstance(answer, tuple) else (int(answer), "")
                receiver._record(Received(self.path, headers, body, status))
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver, not yet started (a test may want it down first)."""
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


# -- helpers ------------------------------------------------------------------------------------


def sinks(daemon: DaemonProc, *configured: dict[str, Any]) -> None:
    daemon.daemon_config.write_text(yaml.safe_dump({"sinks": list(configured)}))


def hook(receiver: Receiver, path: str = "/hook", **fields: Any) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": receiver.url + path, **fields}


def flapper(daemon: DaemonProc, name: str, tmp: Path, **fields: Any) -> Path:
    """An exec workload that fails while its flag file exists; returns the flag."""
    flag = tmp / f"{name}.broken"
    write(daemon, name, "exec", target=f"test ! -e {flag}", retries=1, **fields)
    return flag


def break_and_heal(daemon: DaemonProc, name: str, flag: Path) -> None:
    flag.touch()
    daemon.wait_status(name, lambda s: s["state"] == "unhealthy")
    flag.unlink()
    daemon.wait_status(name, lambda s: s["state"] == "healthy")


def settled(
    daemon: DaemonProc, sink: str = "hook", count: int | None = None
) -> list[dict[str, Any]] | None:
    """The sink's deliveries once none is pending (and there are ``count``), else None."""
    found = deliveries(daemon, sink)
    if not found or (count is not None and len(found) != count):
        return None
    return found if all(r["state"] != "pending" for r in found) else None


def first_arrivals(ids: list[int]) -> list[int]:
    """``ids`` without repeats (at least once may deliver one twice), first arrival kept."""
    out: list[int] = []
    for i in ids:
        if i not in out:
            out.append(i)
    return out


# -- what arrives ---------------------------------------------------------------------------------


def test_state_changes_arrive_as_json_with_the_events_headers(
    daemon: DaemonProc, services: Services, receiver: Receiver
) -> None:
    receiver.start()
    svc = services.start("http")
    sinks(
        daemon,
        hook(receiver, headers={"X-Team": "ops"}, events=["unhealthy", "restart", "healthy"]),
    )
    write(
        daemon,
        "web",
        "http",
        port=svc.port,
        host="127.0.0.1",
        retries=2,
        auto_restart=True,
        restart_command=tuple(svc.start_argv()),
    )
    daemon.start()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    before = time.time()
    svc.kill()
    wait_for(
        "unhealthy, restart, healthy at the receiver",
        lambda: [e["type"] for e in receiver.events()] == ["unhealthy", "restart", "healthy"],
        timeout=30,
        detail=lambda: f"{receiver.events()}\n{daemon.log()}",
    )
    unhealthy, restart, healthy = receiver.got()
    events = [r.json() for r in (unhealthy, restart, healthy)]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    for event in events:
        assert event["workload"] == "web"
        assert event["host"] == socket.gethostname()
        stamp = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before - 1 <= stamp.timestamp() <= time.time()
        assert event["message"]
        assert isinstance(event["details"], dict)
        assert "reminder" not in event
    assert (events[0]["state_from"], events[0]["state_to"]) == ("healthy", "unhealthy")
    assert (events[1]["state_from"], events[1]["state_to"]) == ("unhealthy", "restarting")
    assert events[1]["details"]["attempt"] == 1
    assert events[2]["state_to"] == "healthy"
    for received, event in zip((unhealthy, restart, healthy), events, strict=True):
        h = received.headers
        assert received.path == "/hook"
        assert h["content-type"] == "application/json"
        assert h["user-agent"] == f"healthd/{__version__}"
        assert h["x-team"] == "ops"
        assert h["x-healthd-event"] == event["type"]
        assert h["x-healthd-delivery"] == str(event["id"])
        assert "x-healthd-signature" not in h  # no secret_file
    # the journal says the same: each of them delivered once, at the first attempt. The
    # receiver has an event a moment before the daemon has written its outcome: wait for that.
    found = wait_for("the deliveries settled", lambda: settled(daemon), detail=daemon.log)
    delivered = {r["event_id"]: r for r in found}
    assert [(delivered[i]["state"], delivered[i]["attempts"]) for i in ids] == [
        ("delivered", 1)
    ] * 3
    assert daemon.terminate() == 0


def test_the_signature_verifies_with_the_secret_and_not_with_another(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text("s3cret-Ä\n")  # the trailing newline is not part of the key
    secret_file.chmod(0o600)  # a secret file must be private, as the token file
    sinks(daemon, hook(receiver, secret_file=str(secret_file), events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    break_and_heal(daemon, "job", flag)
    wait_for("two signed events", lambda: len(receiver.got()) == 2, detail=daemon.log)
    for received in receiver.got():
        sent = received.headers["x-healthd-signature"]
        assert sent.startswith("sha256=")
        good = hmac.new("s3cret-Ä".encode(), received.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(sent, f"sha256={good}")
        bad = hmac.new(b"s3cret", received.body, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(sent, f"sha256={bad}")
        tampered = received.body.replace(b'"job"', b'"jab"')
        forged = hmac.new("s3cret-Ä".encode(), tampered, hashlib.sha256).hexdigest()
        assert not hmac.compare_digest(sent, f"sha256={forged}")
    assert daemon.terminate() == 0


def test_filters_choose_events_by_type_and_workload(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    sinks(
        daemon,
        hook(receiver, "/web-down", events=["unhealthy"], workloads=["web"]) | {"name": "a"},
        hook(receiver, "/all", events=["unhealthy", "healthy", "daemon_started"]) | {"name": "b"},
    )
    web, db = flapper(daemon, "web", tmp_path), flapper(daemon, "db", tmp_path)
    daemon.start()
    break_and_heal(daemon, "web", web)
    break_and_heal(daemon, "db", db)
    wait_for("five events on /all", lambda: len(receiver.got("/all")) == 5, detail=daemon.log)
    assert [(e["type"], e["workload"]) for e in receiver.events("/web-down")] == [
        ("unhealthy", "web")
    ]
    assert [(e["type"], e["workload"]) for e in receiver.events("/all")] == [
        ("daemon_started", ""),
        ("unhealthy", "web"),
        ("healthy", "web"),
        ("unhealthy", "db"),
        ("healthy", "db"),
    ]
    # an event a sink does not want gets no delivery row at all: nothing to wait for
    assert [(r["type"], r["workload"]) for r in deliveries(daemon, "a")] == [("unhealthy", "web")]
    assert daemon.terminate() == 0


# -- outages, crashes, hangs ----------------------------------------------------------------------


def test_receiver_down_for_a_while_then_every_event_arrives_in_order(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    sinks(daemon, hook(receiver, events=["unhealthy", "healthy", "check_fail"]))
    flag = flapper(daemon, "job", tmp_path, interval=0.1)
    daemon.start()
    flag.touch()
    wait_for("a backlog of 8", lambda: len(deliveries(daemon, "hook")) >= 8, detail=daemon.log)
    flag.unlink()
    daemon.wait_status("job", lambda s: s["state"] == "healthy")
    wait_for(
        "the healthy event committed", lambda: deliveries(daemon, "hook")[-1]["type"] == "healthy"
    )
    committed = [r["event_id"] for r in deliveries(daemon, "hook")]
    assert all(r["state"] == "pending" for r in deliveries(daemon, "hook"))  # none could go yet
    assert "event=delivery_retry" in daemon.log()

    receiver.start()
    wait_for(
        "every event at the receiver",
        lambda: set(committed) <= set(receiver.ids()),
        timeout=20,
        detail=lambda: f"{receiver.ids()} vs {committed}\n{daemon.log()}",
    )
    arrived = first_arrivals(receiver.ids())
    assert arrived[: len(committed)] == committed  # in order, none missing
    assert arrived == sorted(arrived)
    wait_for("all settled", lambda: settled(daemon))
    assert daemon.terminate() == 0


def test_daemon_killed_in_a_backlog_then_restarted_loses_nothing(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    sinks(daemon, hook(receiver, events=["unhealthy", "healthy", "check_fail"]))
    flag = flapper(daemon, "job", tmp_path, interval=0.1)
    flag.touch()
    daemon.start()
    wait_for("a backlog of 10", lambda: len(deliveries(daemon, "hook")) >= 10, detail=daemon.log)
    daemon.kill()  # SIGKILL, in the middle of it: nothing delivered, some retried
    committed = [r["event_id"] for r in deliveries(daemon, "hook")]
    assert len(committed) >= 10
    flag.unlink()

    receiver.start()
    daemon.start()
    wait_for(
        "every event committed before the kill at the receiver",
        lambda: set(committed) <= set(receiver.ids()),
        timeout=20,
        detail=lambda: f"{receiver.ids()} vs {committed}\n{daemon.log()}",
    )
    arrived = first_arrivals(receiver.ids())
    assert arrived[: len(committed)] == committed
    assert arrived == sorted(arrived)
    # and the restarted daemon goes on: the workload's recovery arrives after them
    wait_for("the healthy event", lambda: "healthy" in [e["type"] for e in receiver.events()])
    assert daemon.terminate() == 0


def test_a_receiver_that_hangs_is_cut_at_the_deadline_and_the_event_retried(
    daemon: DaemonProc, receiver: Receiver
) -> None:
    receiver.start()
    receiver.answer(HANG)
    sinks(daemon, hook(receiver, timeout="500ms", events=["daemon_started"]))
    daemon.start()
    wait_for("the event delivered", receiver.got, detail=daemon.log)
    first, second = receiver.all_requests()
    assert (first.status, second.status) == (0, 200)
    assert first.body == second.body  # the same event, again
    assert first.headers["x-healthd-delivery"] == second.headers["x-healthd-delivery"]
    wait_for("the hung connection closed by the daemon", lambda: receiver.cut == 1)
    (row,) = wait_for("settled", lambda: settled(daemon))
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    assert "no answer within 500ms" in daemon.events("delivery_retry")[0]
    assert daemon.terminate() == 0


# -- answers ------------------------------------------------------------------------------------


def test_a_400_fails_the_event_visibly_and_the_next_events_still_go(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    receiver.answer((400, "unknown team: " + "x" * 500))
    sinks(daemon, hook(receiver, events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    break_and_heal(daemon, "job", flag)
    failed, delivered = wait_for(
        "both settled",
        lambda: settled(daemon, count=2),
        detail=daemon.log,
    )
    assert (failed["type"], failed["state"], failed["attempts"]) == ("unhealthy", "failed", 1)
    assert failed["last_error"].startswith(
        f"POST {receiver.url}/hook: HTTP 400 Bad Request: unknown team: xxx"
    )
    assert len(failed["last_error"]) < 300  # the body's start only
    assert (delivered["type"], delivered["state"]) == ("healthy", "delivered")
    assert [r.status for r in receiver.all_requests()] == [400, 200]  # never retried
    assert "event=delivery_failed" in daemon.log()
    assert daemon.terminate() == 0


@pytest.mark.parametrize("answers", [(500, 503), (429,), ((502, "bad gateway"),)])
def test_5xx_and_429_are_retried_until_delivered(
    daemon: DaemonProc, receiver: Receiver, answers: tuple[Answer, ...]
) -> None:
    receiver.start()
    receiver.answer(*answers)
    sinks(daemon, hook(receiver, events=["daemon_started"]))
    daemon.start()
    (row,) = wait_for("settled", lambda: settled(daemon), timeout=20, detail=daemon.log)
    assert (row["state"], row["attempts"]) == ("delivered", len(answers) + 1)
    statuses = [r.status for r in receiver.all_requests()]
    assert statuses == [a[0] if isinstance(a, tuple) else a for a in answers] + [200]
    assert len({r.body for r in receiver.all_requests()}) == 1
    assert "event=delivery_retry" in daemon.log()
    assert daemon.terminate() == 0


# -- noise control and expiry ---------------------------------------------------------------------


def test_an_event_undeliverable_past_max_age_is_expired_visibly(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    sinks(daemon, hook(receiver, max_age="1s", events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    flag.touch()
    daemon.wait_status("job", lambda s: s["state"] == "unhealthy")
    (row,) = wait_for(
        "the unhealthy event expired", lambda: settled(daemon), timeout=10, detail=daemon.log
    )
    assert (row["type"], row["state"]) == ("unhealthy", "expired")
    assert row["attempts"] >= 1
    assert "connect" in row["last_error"].lower()  # why it never went stays visible
    assert "event=event_expired" in daemon.log()

    receiver.start()
    flag.unlink()
    wait_for("the healthy event", receiver.events, detail=daemon.log)
    assert [e["type"] for e in receiver.events()] == ["healthy"]  # never the expired one
    assert daemon.terminate() == 0


def test_min_interval_suppresses_repeats_of_a_workloads_event_type(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    sinks(daemon, hook(receiver, min_interval="1h", events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    daemon.start()
    break_and_heal(daemon, "job", flag)
    break_and_heal(daemon, "job", flag)  # flapping: the same two again
    found = wait_for("four settled", lambda: settled(daemon, count=4), detail=daemon.log)
    assert [(r["type"], r["state"]) for r in found] == [
        ("unhealthy", "delivered"),
        ("healthy", "delivered"),
        ("unhealthy", "suppressed"),
        ("healthy", "suppressed"),
    ]
    assert [e["type"] for e in receiver.events()] == ["unhealthy", "healthy"]
    assert daemon.terminate() == 0


def test_repeat_interval_reminds_while_a_workload_stays_unhealthy(
    daemon: DaemonProc, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.start()
    sinks(daemon, hook(receiver, repeat_interval="1s", events=["unhealthy", "healthy"]))
    flag = flapper(daemon, "job", tmp_path)
    flag.touch()
    daemon.start()
    wait_for("two reminders", lambda: len(receiver.got()) >= 3, timeout=10, detail=daemon.log)
    first, *reminders = receiver.events()
    assert first["type"] == "unhealthy"
    assert "reminder" not in first
    for reminder in reminders:
        assert reminder["reminder"] is True
        assert {k: v for k, v in reminder.items() if k != "reminder"} == first  # the same event
    arrivals = [r.at for r in receiver.got()]
    assert arrivals[1] - arrivals[0] >= 0.7, arrivals  # counted from the event, not sent at once
    assert all(0.9 <= b - a <= 2.0 for a, b in itertools.pairwise(arrivals[1:])), arrivals
    flag.unlink()
    wait_for("healthy", lambda: receiver.events()[-1]["type"] == "healthy", detail=daemon.log)
    count = len(receiver.got())
    time.sleep(1.5)  # past the interval: no reminder once healthy
    assert len(receiver.got()) == count
    assert [r["reminder"] for r in deliveries(daemon, "hook")].count(1) == count - 2

    flag.touch()  # unhealthy again: reminded an interval after this event, not at once
    again = wait_for("unhealthy again", lambda: receiver.got()[count:], detail=daemon.log)[0]
    assert again.json()["type"] == "unhealthy"
    assert again.json()["id"] > first["id"]
    reminded = wait_for("its reminder", lambda: receiver.got()[count + 1 :], detail=daemon.log)[0]
    assert reminded.json()["id"] == again.json()["id"]
    assert reminded.at - again.at >= 0.7  # not at the next round (0.25 s), an interval on
    assert daemon.terminate() == 0


# -- the sink alone, against the same receiver ---------------------------------------------------


def event(kind: EventType = EventType.UNHEALTHY, event_id: int = 7) -> Event:
    return Event(
        kind,
        "web",
        datetime.now(UTC),
        "health check failed 3 times: connection refused",
        state_from=State.HEALTHY,
        state_to=State.UNHEALTHY,
        details={"error": "connection refused"},
        id=event_id,
        host="node1",
    )


def webhook(receiver: Receiver, **fields: Any) -> WebhookSink:
    settings = SinkSettings(name="hook", type="webhook", url=receiver.url + "/hook", **fields)
    return WebhookSink(settings, make_logger(io.StringIO()))


def connections_to(port: int) -> int:
    """TCP connections to 127.0.0.1:``port`` still open on the client's side (established, or
    closed by the server but not yet by the client)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if int(remote.split(":")[1], 16) == port and state in ("01", "08"):
            count += 1
    return count


async def test_an_attempt_cancelled_inside_httpx_leaves_no_connection_behind(
    receiver: Receiver,
) -> None:
    receiver.start()
    receiver.answer(200, HANG, HANG)
    sink = webhook(receiver)
    try:
        await sink.deliver(event(event_id=1), reminder=False)  # the client and its connection
        assert connections_to(receiver.port) == 1  # kept alive
        for n in (2, 3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # as the dispatcher cuts an attempt
                    await sink.deliver(event(event_id=n), reminder=False)
        await asyncio.to_thread(wait_for, "both hung requests closed", lambda: receiver.cut == 2)
        assert connections_to(receiver.port) == 0  # each cut attempt closed its connection
        # One connection at most (the client's limit): a leaked one would make this wait.
        async with asyncio.timeout(5):
            await sink.deliver(event(event_id=4), reminder=True)
        assert connections_to(receiver.port) == 1
        assert receiver.ids() == [1, 4]
        assert receiver.events()[-1]["reminder"] is True
    finally:
        await sink.close()
    assert connections_to(receiver.port) == 0


async def test_a_redirect_is_not_followed_and_fails_permanently(receiver: Receiver) -> None:
    receiver.start()
    receiver.answer(301)
    sink = webhook(receiver)
    try:
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(event(), reminder=False)
    finally:
        await sink.close()
    assert caught.value.permanent
    assert "HTTP 301" in str(caught.value)
    assert "redirect to http://127.0.0.1:1/elsewhere not followed" in str(caught.value)
    assert len(receiver.all_requests()) == 1


async def test_a_refused_connection_is_transient(receiver: Receiver) -> None:
    sink = webhook(receiver)  # never started: nothing listens
    try:
        with pytest.raises(DeliveryError) as caught:
            await sink.deliver(event(), reminder=False)
    finally:
        await sink.close()
    assert not caught.value.permanent
    assert str(caught.value).startswith(f"POST {receiver.url}/hook: ConnectError")


@pytest.mark.parametrize("content", ["", "  \n"])
async def test_an_empty_secret_is_refused(receiver: Receiver, tmp_path: Path, content: str) -> None:
    receiver.start()
    secret = tmp_path / "secret"
    secret.write_text(content)
    secret.chmod(0o600)  # a secret file must be private, as the token file
    sink = webhook(receiver, secret_file=secret)
    try:
        with pytest.raises(DeliveryError, match="is empty: refusing to sign"):
            await sink.deliver(event(), reminder=False)
        secret.write_text("now-set\n")  # fixed by the operator: the next attempt signs
        await sink.deliver(event(), reminder=False)
    finally:
        await sink.close()
    (received,) = receiver.got()
    expected = hmac.new(b"now-set", received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-healthd-signature"] == f"sha256={expected}"


@pytest.fixture
def self_signed(tmp_path: Path, require_binary: Callable[[str], str]) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, signed by nobody the system knows."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    argv = [require_binary("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes"]
    argv += ["-days", "1", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key


async def test_https_trusts_the_systems_store_and_refuses_an_unknown_certificate(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    receiver = Receiver(tls).start()
    try:
        unknown = webhook(receiver)  # the system's store does not know this certificate
        try:
            with pytest.raises(DeliveryError) as caught:
                await unknown.deliver(event(), reminder=False)
        finally:
            await unknown.close()
        assert not caught.value.permanent  # a certificate can be fixed
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        # OpenSSL's SSL_CERT_FILE stands for an operator's CA in the system's store
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting = webhook(receiver)
        try:
            await trusting.deliver(event(), reminder=False)
        finally:
            await trusting.close()
        assert receiver.ids() == [7]
    finally:
        receiver.stop()
