"""Pieces the soak and crash tests share: a webhook receiver, /proc sampling, file checks.

All real: the receiver is an HTTP server on loopback, the samples are read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

# The reference's Status fields and their JSON types (healthd adds more; these must be there).
REFERENCE_STATUS = {
    "workload": str,
    "healthy": bool,
    "last_check": str,
    "consecutive_fails": int,
    "total_checks": int,
    "total_fails": int,
    "restart_count": int,
}


def check_reference_shape(data: Any) -> list[dict[str, Any]]:
    """``data`` (statuses.json, parsed) as the reference's reader needs it; raises
    AssertionError naming what is wrong."""
    assert isinstance(data, list), f"statuses.json is a {type(data).__name__}, not a list"
    for entry in data:
        assert isinstance(entry, dict), entry
        for key, kind in REFERENCE_STATUS.items():
            assert isinstance(entry.get(key), kind), f"{key} of {entry.get('workload')}: {entry}"
        datetime.fromisoformat(entry["last_check"])  # a time, or the zero time
        assert entry["total_fails"] <= entry["total_checks"], entry
    return data


# -- a webhook receiver -----------------------------------------------------------------------


class _Server(socketserver.ThreadingTCPServer):
    # Not http.server.HTTPServer: its server_bind looks the host name up (getfqdn).
    daemon_threads = True
    allow_reuse_address = True
    receiver: WebhookReceiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the daemon's client uses it
    # The answer goes out in one write, flushed after each request, with no Nagle delay:
    # otherwise headers and body wait on a delayed ACK, 40 ms a delivery.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server: _Server

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the daemon was killed mid-request
            super().handle()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if len(raw) < length:
            return  # cut short by a kill: never answered, so never counted as delivered
        try:
            body = json.loads(raw)
        except ValueError:
            self.server.receiver.conflicts.append(f"a body that is not JSON: {raw[:200]!r}")
            body = {"id": -1, "type": "", "workload": ""}
        receiver = self.server.receiver
        receiver.arrivals.append(time.monotonic())
        if body.get("reminder") is True:
            receiver.reminders.append(time.monotonic())
        if len(receiver.arrivals) <= receiver.refuse_first:
            self.send_response(503)  # a receiver that is down: to be retried
        else:
            receiver.record(body, self.headers.get("X-Healthd-Delivery", ""))
            # Answered only once recorded: what the daemon sees as delivered, the test has seen.
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class WebhookReceiver:
    """Records every event POSTed to it: id -> (type, workload)."""

    refuse_first: int = 0  # answer this many posts with 503
    seen: dict[int, tuple[str, str]] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of every post
    reminders: list[float] = field(default_factory=list)  # and of every reminder
    conflicts: list[str] = field(default_factory=list)
    posts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: _Server | None = None

    def record(self, body: dict[str, Any], header_id: str) -> None:
        key = (str(body["type"]), str(body["workload"]))
        with self._lock:
            self.posts += 1
            event_id = int(body["id"])
            if header_id != str(event_id):
                self.conflicts.append(f"X-Healthd-Delivery {header_id} for event {event_id}")
            before = self.seen.setdefault(event_id, key)
            if before != key:  # at least once is fine; the same id as another event is not
                self.conflicts.append(f"event {event_id} delivered as {before} and as {key}")

    def snapshot(self) -> dict[int, tuple[str, str]]:
        with self._lock:
            return dict(self.seen)

    def start(self) -> str:
        """Serve on a free loopback port; returns the URL to post to."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        self._server = server
        threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}/hook"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# -- the event journal, read-only --------------------------------------------------------------


def journal_events(path: Path) -> dict[int, tuple[str, str, float]]:
    """events.db after a crash: checked whole (``PRAGMA integrity_check``), then every event
    as id -> (type, workload, unix time). Opened read-only: never repaired by the reader."""
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchall()
        assert verdict == [("ok",)], f"{path}: integrity_check says {verdict}"
        rows = db.execute("SELECT id, type, workload, unix FROM events ORDER BY id").fetchall()
    return {int(i): (str(t), str(w), float(u)) for i, t, w, u in rows}


# -- /proc ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run began
    fds: int
    rss_kb: int
    children: int  # live child processes of the daemon
    zombies: tuple[int, ...]  # pids of its children that exited and are not reaped yet


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each child of ``pid``, from /proc/PID/task/*/children."""
    found: list[tuple[int, str]] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                for child in text.split():
                    found.append((int(child), _state(int(child))))
    return found


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def sample(pid: int, at: float) -> Sample:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    kids = children_of(pid)
    zombies = tuple(p for p, state in kids if state == "Z")
    return Sample(at, fds, rss, len(kids) - len(zombies), zombies)


# -- a target that accepts and never answers ---------------------------------------------------


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while self.request.recv(4096):
                pass  # read the request and say nothing, until the checker gives up


class _SilentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class SilentServer:
    """Accepts connections, reads, never answers: every HTTP check against it times out."""

    _server: _SilentServer | None = None

    def start(self) -> int:
        server = _SilentServer(("127.0.0.1", 0), _Silent)
        self._server = server
        threading.Thread(target=server.serve_forever, name="silent", daemon=True).start()
        port: int = server.server_address[1]
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
