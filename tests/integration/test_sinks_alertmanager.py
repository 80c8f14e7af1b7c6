"""The Alertmanager sink against a real Prometheus Alertmanager (Debian's
``prometheus-alertmanager``, started by the test on loopback with no cluster port): a workload
that really breaks shows up as a firing alert in Alertmanager's API, is re-posted while it lasts,
reaches an Alertmanager that was down when it broke, and is resolved when the workload is
healthy again. A small HTTP server in the test gives the answers a real Alertmanager will not
(5xx, 429, 3xx), to show how each is classified.

Alertmanager (0.25) lists only alerts still active: a resolved alert (``endsAt`` in the past)
disappears from GET /api/v2/alerts whatever the filters, and its receipt shows only in
``alertmanager_alerts_received_total{status="resolved"}``. The tests fire alerts with ``endsAt``
hours ahead, so an alert that disappears within seconds was resolved by healthd's post, not by
its own timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from healthd.config.sinks import SinkSettings
from healthd.logs import make_logger
from healthd.model import Event, EventType
from healthd.sinks import DeliveryError
from healthd.sinks.alertmanager import ALERTNAME, AlertmanagerSink

from .harness import DaemonProc, Service, Services, free_port, wait_for, write

# A route to a receiver with no integrations: Alertmanager keeps and shows alerts, sends nothing.
CONFIG = "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n"
LABELS = {"alertname", "workload", "host", "severity"}
HOST = socket.gethostname()  # the daemon runs here: its events' host


@dataclass
class Alertmanager:
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL its process group: it loses every alert (it keeps them in memory only)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body), or None while nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the active alerts."""
        answer = self.get("/api/v2/alerts")
        assert answer is not None, self.log()
        assert answer[0] == 200, (answer, self.log())
        found = json.loads(answer[1])
        assert isinstance(found, list)
        return found

    def alert_of(self, workload: str) -> dict[str, Any] | None:
        return next((a for a in self.alerts() if a["labels"].get("workload") == workload), None)

    def received(self, status: str) -> float:
        """Alerts received through the v2 API with ``status`` (firing or resolved)."""
        answer = self.get("/metrics")
        assert answer is not None, self.log()
        assert answer[0] == 200, answer
        for family in text_string_to_metric_families(answer[1].decode()):
            for sample in family.samples:
                if sample.name == "alertmanager_alerts_received_total" and sample.labels == {
                    "status": status,
                    "version": "v2",
                }:
                    return sample.value
        raise AssertionError(f"no alertmanager_alerts_received_total{{status={status!r}}}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def alertmanager(
    tmp_path: Path, env: dict[str, str], require_binary: Callable[[str], str]
) -> Iterator[Callable[[int], Alertmanager]]:
    """Starts Alertmanager on 127.0.0.1:PORT (own process group; returns once it is ready).
    Every one started is killed with its group at teardown."""
    binary = require_binary("prometheus-alertmanager")
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> Alertmanager:
        directory = tmp_path / f"alertmanager{len(started)}"
        directory.mkdir()
        (directory / "am.yml").write_text(CONFIG)
        log_path = directory / "alertmanager.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={directory / 'am.yml'}",
                    f"--storage.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",  # no HA: no gossip port opened
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        started.append(proc)
        am = Alertmanager(f"http://127.0.0.1:{port}", log_path, proc)

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited with {proc.returncode}:\n{am.log()}")
            answer = am.get("/-/ready")
            return answer is not None and answer[0] == 200

        wait_for("alertmanager to be ready", ready, timeout=15, detail=am.log)
        return am

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def sink_config(url: str, *, resend_interval: str = "1h") -> str:
    return (
        "sinks:\n"
        "  - name: am\n"
        "    type: alertmanager\n"
        f"    url: {url}\n"
        "    severity: page\n"
        f"    resend_interval: {resend_interval}\n"
        "    timeout: 2s\n"
    )


def event_times(daemon: DaemonProc, workload: str, kind: str) -> list[datetime]:
    """When ``kind`` events of ``workload`` happened, from the daemon's own journal."""
    uri = f"file:{daemon.status_dir / 'events.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT time FROM events WHERE workload = ? AND type = ? ORDER BY id",
            (workload, kind),
        ).fetchall()
    return [datetime.fromisoformat(row[0]) for row in rows]


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def same_ms(a: datetime, b: datetime) -> bool:
    """Alertmanager keeps milliseconds."""
    return abs(a - b) < timedelta(milliseconds=1)


def restart(service: Service, env: dict[str, str]) -> None:
    subprocess.run(service.start_argv(), env=env, check=True, timeout=30)


def broken_then_firing(
    daemon: DaemonProc, services: Services, am: Alertmanager, resend_interval: str = "1h"
) -> tuple[Service, dict[str, Any]]:
    """A healthy http workload ``web``, then its service killed: returns the service and the
    alert Alertmanager shows for it."""
    web = services.start("http")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    daemon.daemon_config.write_text(sink_config(am.url, resend_interval=resend_interval))
    daemon.start()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    assert am.alerts() == []
    web.kill()
    daemon.wait_status("web", lambda s: s["state"] == "unhealthy")
    alert = wait_for(
        "the alert in Alertmanager",
        lambda: am.alert_of("web"),
        timeout=15,
        detail=lambda: f"daemon:\n{daemon.log()}\nalertmanager:\n{am.log()}",
    )
    return web, alert


def test_a_broken_workload_fires_an_alert_and_its_recovery_resolves_it(
    daemon: DaemonProc,
    services: Services,
    env: dict[str, str],
    alertmanager: Callable[[int], Alertmanager],
) -> None:
    am = alertmanager(free_port())
    web, alert = broken_then_firing(daemon, services, am)
    posted = datetime.now(UTC)

    assert alert["labels"] == {
        "alertname": ALERTNAME,
        "workload": "web",
        "host": HOST,
        "severity": "page",
    }
    assert alert["annotations"]["summary"] == f"healthd workload web on {HOST} is unhealthy"
    description = alert["annotations"]["description"]
    assert description.startswith("health check failed 1 times: "), description
    assert len(description) > len("health check failed 1 times: ")  # the check's error
    assert alert["status"]["state"] == "active"
    (unhealthy_at,) = event_times(daemon, "web", "unhealthy")
    assert same_ms(stamp(alert["startsAt"]), unhealthy_at)
    # 4 x resend_interval (1h) ahead: ended by healthd's resolution, never by this timeout
    ends = stamp(alert["endsAt"]) - posted
    assert timedelta(hours=3, minutes=59) < ends <= timedelta(hours=4), ends
    assert am.received("resolved") == 0

    restart(web, env)
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    wait_for(
        "the alert to be resolved",
        lambda: am.alert_of("web") is None,
        timeout=15,
        detail=lambda: f"{am.alerts()}\n{daemon.log()}",
    )
    assert am.received("resolved") == 1
    assert am.received("firing") == 1  # resend_interval 1h: no re-post yet


def test_firing_alerts_are_reposted_every_resend_interval_and_stay_resolved_after(
    daemon: DaemonProc,
    services: Services,
    env: dict[str, str],
    alertmanager: Callable[[int], Alertmanager],
) -> None:
    am = alertmanager(free_port())
    web, first = broken_then_firing(daemon, services, am, resend_interval="1s")
    seen = [first]

    def reposted() -> dict[str, Any] | None:
        alert = am.alert_of("web")
        return alert if alert and alert["updatedAt"] != seen[-1]["updatedAt"] else None

    for _ in range(2):
        seen.append(wait_for("a re-post", reposted, timeout=5, detail=daemon.log))
    for before, after in itertools.pairwise(seen):
        # each re-post pushes endsAt (4 x 1s after it) forward; the alert's start stays
        assert stamp(after["endsAt"]) > stamp(before["endsAt"])
        assert after["startsAt"] == first["startsAt"]
        assert after["labels"] == first["labels"]
        assert after["annotations"] == first["annotations"]
    gap = stamp(seen[2]["updatedAt"]) - stamp(seen[1]["updatedAt"])
    assert timedelta(seconds=0.5) < gap < timedelta(seconds=3), gap

    restart(web, env)
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    wait_for("the alert to be resolved", lambda: am.alert_of("web") is None, timeout=10)
    firing_posts = am.received("firing")
    time.sleep(2.5)  # two resend intervals and more: a re-post would fire it again
    assert am.alert_of("web") is None
    assert am.received("firing") == firing_posts
    assert "alertmanager_resend_failed" not in daemon.log()


def test_an_alertmanager_down_when_the_workload_breaks_gets_the_alert_once_it_is_up(
    daemon: DaemonProc,
    services: Services,
    env: dict[str, str],
    alertmanager: Callable[[int], Alertmanager],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = services.start("http")
    write(daemon, "web", "http", port=web.port, host="127.0.0.1", retries=1)
    # resend_interval 1h: only the outbox's retries can bring the alert, not a re-post
    daemon.daemon_config.write_text(sink_config(url))
    daemon.start()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    since = len(daemon.log())
    web.kill()
    retry = daemon.wait_event("delivery_retry", since)[0]
    assert "sink=am" in retry.split(), retry
    assert "ConnectError" in retry, retry

    am = alertmanager(port)
    alert = wait_for(
        "the alert after Alertmanager came up",
        lambda: am.alert_of("web"),
        timeout=15,
        detail=daemon.log,
    )
    (unhealthy_at,) = event_times(daemon, "web", "unhealthy")
    assert same_ms(stamp(alert["startsAt"]), unhealthy_at)  # when it broke, not when it arrived
    assert alert["labels"]["severity"] == "page"

    restart(web, env)
    wait_for("the alert to be resolved", lambda: am.alert_of("web") is None, timeout=15)


def test_failed_restarts_update_the_alerts_description_and_keep_its_start(
    daemon: DaemonProc,
    services: Services,
    alertmanager: Callable[[int], Alertmanager],
) -> None:
    am = alertmanager(free_port())
    web = services.start("http")
    write(
        daemon,
        "web",
        "http",
        port=web.port,
        host="127.0.0.1",
        retries=1,
        auto_restart=True,
        restart_command=["/bin/false"],
        restart_delay=0.5,
    )
    daemon.daemon_config.write_text(sink_config(am.url))
    daemon.start()
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    web.kill()

    def updated() -> dict[str, Any] | None:
        alert = am.alert_of("web")
        text = alert["annotations"]["description"] if alert else ""
        return alert if text.startswith("restart attempt ") else None

    alert = wait_for("the restart's failure in the alert", updated, timeout=15, detail=daemon.log)
    assert "failed" in alert["annotations"]["description"]
    (unhealthy_at,) = event_times(daemon, "web", "unhealthy")
    assert same_ms(stamp(alert["startsAt"]), unhealthy_at)
    assert am.received("resolved") == 0

    # A new Alertmanager knows no alerts: the next failed restart brings this one back, still
    # starting when the workload broke (Alertmanager's merge cannot fix the start for us now).
    am.kill()
    am = alertmanager(int(am.url.rsplit(":", 1)[1]))
    alert = wait_for("the alert in the new Alertmanager", updated, timeout=15, detail=daemon.log)
    assert same_ms(stamp(alert["startsAt"]), unhealthy_at)
    assert len(event_times(daemon, "web", "unhealthy")) == 1


# -- answers a real Alertmanager does not give -------------------------------------------------


@dataclass
class Receiver:
    """A real HTTP server on loopback answering every POST with ``status``, recording them."""

    status: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append((self.path, dict(self.headers), body))
            self.send_response(state.status)
            if 300 <= state.status < 400:
                self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            reply = json.dumps("no such alert, says the receiver").encode()
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.server = server
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class NothingFiring:
    def firing(self) -> list[Event]:
        return []


def unhealthy_event() -> Event:
    return Event(
        EventType.UNHEALTHY,
        "web",
        datetime.now(UTC),
        "health check failed 3 times: connection refused",
        id=7,
        host="node1",
    )


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(500, False), (503, False), (429, False), (400, True), (404, True), (301, True)],
)
async def test_answers_are_retried_or_failed_for_good_like_the_webhooks(
    receiver: Receiver, status: int, permanent: bool
) -> None:
    receiver.status = status
    settings = SinkSettings(name="am", type="alertmanager", url=receiver.url + "/", timeout=2.0)
    sink = AlertmanagerSink(settings, make_logger(), NothingFiring())
    try:
        with pytest.raises(DeliveryError) as raised:
            await sink.deliver(unhealthy_event(), reminder=False)
    finally:
        await sink.close()
    assert raised.value.permanent is permanent
    assert f"HTTP {status}" in str(raised.value)
    assert "no such alert, says the receiver" in str(raised.value)  # the JSON string, unquoted
    ((path, headers, body),) = receiver.requests
    assert path == "/api/v2/alerts"
    assert headers["Content-Type"] == "application/json"
    assert [a["labels"]["workload"] for a in json.loads(body)] == ["web"]


async def test_an_alertmanager_that_is_not_listening_is_a_transient_failure() -> None:
    settings = SinkSettings(
        name="am", type="alertmanager", url=f"http://127.0.0.1:{free_port()}", timeout=2.0
    )
    sink = AlertmanagerSink(settings, make_logger(), NothingFiring())
    try:
        with pytest.raises(DeliveryError) as raised:
            await sink.deliver(unhealthy_event(), reminder=False)
    finally:
        await sink.close()
    assert raised.value.permanent is False
    assert "ConnectError" in str(raised.value)


async def test_events_it_does_not_act_on_post_nothing(receiver: Receiver) -> None:
    settings = SinkSettings(name="am", type="alertmanager", url=receiver.url, timeout=2.0)
    sink = AlertmanagerSink(settings, make_logger(), NothingFiring())
    acted = {EventType.UNHEALTHY, EventType.HEALTHY}
    acted |= {EventType.RESTART_FAILED, EventType.RESTART_EXHAUSTED}
    try:
        for kind in EventType:
            before = len(receiver.requests)
            await sink.deliver(
                Event(kind, "web", datetime.now(UTC), "m", id=1, host="h"), reminder=False
            )
            assert (len(receiver.requests) > before) is (kind in acted), kind
    finally:
        await sink.close()
