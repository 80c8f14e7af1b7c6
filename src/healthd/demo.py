"""``healthd demo``: the real daemon watching real local services, one of which breaks.

Three services start in a temporary directory: ``web`` (HTTP), ``cache`` (TCP) and
``payments`` (HTTP), which crashes after a few seconds. The daemon notices, marks it unhealthy,
runs its restart command and sees it healthy again. A live view shows states and events; at
the end the demo asks the daemon's real API what a monitoring system would see, and what its
webhook sink delivered to a receiver on loopback (unhealthy, restart, healthy), then stops
everything it started and removes the directory. Exit status 0 when the story happened
(payments broke, was restarted, proved healthy, the API and /metrics say so, and the webhook
received the three events in order), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from healthd import demo_services
from healthd.api.http import HttpServer
from healthd.api.messages import Request, Response
from healthd.api.service import ApiService
from healthd.client import ApiClient, Endpoint
from healthd.config import editor
from healthd.config.daemon import DaemonSettings
from healthd.config.daemon_file import ApiSettings, DaemonFile, ListenAddress
from healthd.config.sinks import SinkSettings
from healthd.config.workload import WorkloadConfig
from healthd.engine.daemon import Daemon
from healthd.events import EventBus, LogSink
from healthd.logs import Logger, make_logger
from healthd.loop import run_loop
from healthd.model import Event, EventType, State
from healthd.sinks.notifier import build_notifier

CRASH_AFTER = 6.0
_COLORS = {
    State.HEALTHY: "32",
    State.UNHEALTHY: "31",
    State.RESTARTING: "33",
    State.GAVE_UP: "35",
    State.STARTING: "36",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Story:
    """What the demo watches for; also the event sink of the live view."""

    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, Event]] = field(default_factory=list)

    def publish(self, event: Event) -> None:
        self.events.append((time.monotonic() - self.started, event))

    def seen(self, kind: EventType, workload: str = "payments") -> float | None:
        return next((t for t, e in self.events if e.type is kind and e.workload == workload), None)

    def complete(self) -> bool:
        times = [self.seen(k) for k in (EventType.UNHEALTHY, EventType.RESTART, EventType.HEALTHY)]
        seen = [t for t in times if t is not None]
        return len(seen) == len(times) and seen == sorted(seen)


class LiveView:
    def __init__(self, daemon: Daemon, story: Story, out: TextIO) -> None:
        self.daemon = daemon
        self.story = story
        self.out = out
        self.tty = out.isatty()
        self.printed = 0

    def paint(self, remaining: float) -> None:
        if not self.tty:  # a pipe or a log: one line per event, no redrawing
            for t, e in self.story.events[self.printed :]:
                print(f"[{t:5.1f}s] {e.type.value:<17} {e.workload:<9} {e.message}", file=self.out)
            self.printed = len(self.story.events)
            self.out.flush()
            return
        lines = [
            f"healthd demo: {len(self.daemon.runners)} workloads, {remaining:4.0f}s left "
            "(Ctrl-C stops)",
            "",
        ]
        lines.append(
            f"{'WORKLOAD':<10} {'STATE':<11} {'CHECKS':>6} {'FAILS':>5} {'RESTARTS':>8}  LAST ERROR"
        )
        for name, s in sorted(self.daemon.statuses.items()):
            color = _COLORS.get(s.state, "0")
            state = f"\x1b[{color}m{s.state.value:<11}\x1b[0m"
            lines.append(
                f"{name:<10} {state} {s.total_checks:>6} {s.total_fails:>5} "
                f"{s.restart_count:>8}  {s.last_error[:50]}"
            )
        lines += ["", "recent events:"]
        for t, e in self.story.events[-10:]:
            lines.append(f"  [{t:5.1f}s] {e.type.value:<17} {e.workload:<9} {e.message[:70]}")
        self.out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        self.out.flush()


def _configs(work: Path) -> list[tuple[WorkloadConfig, list[str]]]:
    """Each workload's config and the command that starts its service."""
    py = [sys.executable, "-m", "healthd.demo_services"]
    out = []
    for name, kind, crash in (
        ("web", "http", None),
        ("cache", "tcp", None),
        ("payments", "http", CRASH_AFTER),
    ):
        port = free_port()
        start = [
            *py,
            "start",
            "--kind",
            kind,
            "--port",
            str(port),
            "--pidfile",
            str(work / f"{name}.pid"),
            "--log",
            str(work / f"{name}.log"),
        ]
        first = [*start, "--crash-after", str(crash)] if crash else start
        cfg = WorkloadConfig(
            workload=name,
            type=kind,
            target="/healthz" if kind == "http" else "",
            port=port,
            host="127.0.0.1",
            interval=1.0,
            timeout=1.0,
            retries=2,
            auto_restart=name == "payments",
            max_restarts=3,
            restart_delay=2.0,
            restart_command=tuple(start) if name == "payments" else None,
        )
        out.append((cfg, first))
    return out


async def _run(work: Path, duration: float, out: TextIO, log_file: TextIO) -> bool:
    config_dir, status_dir = work / "config", work / "status"
    for cfg, start_cmd in _configs(work):
        editor.write(config_dir, cfg)
        proc = await asyncio.create_subprocess_exec(*start_cmd)
        if await proc.wait() != 0:
            raise RuntimeError(f"could not start the {cfg.workload} service")
    story = Story()
    log = make_logger(log_file)
    hook = WebhookReceiver(log)
    hook_url = await hook.start()
    sink = SinkSettings(
        name="demo-webhook",
        type="webhook",
        url=hook_url,
        events=(EventType.UNHEALTHY, EventType.RESTART, EventType.HEALTHY),
    )
    notifier = build_notifier(DaemonFile(sinks=(sink,)), status_dir, log)
    daemon = Daemon(
        DaemonSettings(config_dir=config_dir, status_dir=status_dir),
        bus=EventBus(log, [LogSink(log), story, notifier], journal=notifier.journal),
        log=log,
        notifier=notifier,
    )
    view = LiveView(daemon, story, out)
    print(
        f"healthd demo: watching web (http), cache (tcp) and payments (http, crashes "
        f"after {CRASH_AFTER:.0f}s) for {duration:.0f}s; work dir {work}",
        file=out,
    )
    api = ApiService(daemon, ApiSettings(listen=ListenAddress("127.0.0.1", 0)), log)
    await api.start()
    listen = api.endpoints["listen"]
    print(
        f"the status page: http://{listen}/ (open it in a browser while the demo runs); "
        f"the API: http://{listen}/v1/status; webhook: {hook_url}",
        file=out,
    )
    task = asyncio.create_task(daemon.run())
    # A closed terminal (SIGHUP) must still stop the services the demo started.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, daemon.request_stop)
    try:
        with daemon.capture_signals(hangup_reloads=False):
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline and not task.done():
                view.paint(deadline - time.monotonic())
                await asyncio.sleep(0.5)
            view.paint(0)
            api_agrees = await asyncio.to_thread(ask_the_api, api.endpoints["listen"], out)
            daemon.request_stop()
            await task
    finally:
        await api.close()
        await hook.close()
    received = [f"{e['type']} {e['workload']}" for e in hook.received]
    print(f"the webhook received: {', '.join(received) or 'nothing'}", file=out)
    told = ["unhealthy payments", "restart payments", "healthy payments"]
    return story.complete() and api_agrees and [r for r in received if r in told] == told


class WebhookReceiver:
    """Where the demo's webhook sink delivers: a loopback HTTP endpoint (healthd's own server)
    that keeps what it is sent, as a chat or paging service would."""

    def __init__(self, log: Logger) -> None:
        self.received: list[dict[str, Any]] = []
        self.server = HttpServer(self._receive, log=log)

    async def start(self) -> str:
        host, port = await self.server.listen_tcp("127.0.0.1", 0)
        return f"http://{host}:{port}/hook"

    async def _receive(self, request: Request) -> Response:
        self.received.append(request.json())
        return Response(204)

    async def close(self) -> None:
        await self.server.close()


def ask_the_api(address: str, out: TextIO) -> bool:
    """What a monitoring system would see now, through the real API: payments healthy."""
    client = ApiClient([Endpoint(address, unix=False)])
    status = client.call("GET", "/v1/status/payments")
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    up = next(
        (
            line.rsplit(" ", 1)[1]
            for line in metrics.splitlines()
            if line.startswith('healthd_workload_up{workload="payments"}')
        ),
        "missing",
    )
    print(
        f"the API says: payments {status['state']}, {status['restart_count']} restart(s); "
        f'/metrics: healthd_workload_up{{workload="payments"}} {up}',
        file=out,
    )
    return bool(status["state"] == "healthy" and up == "1.0")


def run_demo(duration: float = 30.0, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    work = Path(tempfile.mkdtemp(prefix="healthd-demo-"))
    try:
        with open(work / "daemon.log", "w") as log_file:
            ok = run_loop(_run(work, duration, out, log_file))
    finally:
        for pidfile in work.glob("*.pid"):
            demo_services.stop(pidfile)
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    if ok:
        print(
            "demo: payments crashed, was marked unhealthy, restarted, and is healthy again. "
            "All services stopped.",
            file=out,
        )
        return 0
    print(
        "demo: payments did not complete crash -> restart -> healthy in time "
        "(try a longer --duration). All services stopped.",
        file=out,
    )
    return 1
