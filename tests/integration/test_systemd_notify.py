"""systemd's notify protocol as the real daemon speaks it, to a datagram socket the test binds
where systemd's would be (``$NOTIFY_SOCKET``), with a watchdog of 400 ms (``$WATCHDOG_USEC``):
READY=1 once the workloads are loaded and the API answers, WATCHDOG=1 at about half that,
RELOADING=1/READY=1 around a reload, STOPPING=1 at SIGTERM. And that the pets come from the
event loop's timer wheel: a blocked loop, or a wheel that no longer fires, stops them while a
thread beside them would go on.

The socket lives in a short temp dir rather than tmp_path: a Unix socket's path is limited
to 107 bytes, and pytest's tmp_path for these test names is longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from healthd.engine.scheduler import Scheduler
from healthd.logs import make_logger
from healthd.loop import run_loop
from healthd.systemd import SystemdNotifier

from .harness import DaemonProc, Services, connect, free_port, wait_for, write

WATCHDOG_USEC = 400_000  # pets every 0.2 s


@dataclass
class Message:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]


@dataclass
class Listener:
    """The service manager's end: a bound datagram socket, read by a thread."""

    sock: socket.socket
    address: str  # as $NOTIFY_SOCKET says it
    messages: list[Message] = field(default_factory=list)
    on_ready: list[dict[str, object]] = field(default_factory=list)
    api_port: int = 0  # when set: GET /v1/status the moment READY=1 arrives
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(Message(time.monotonic(), fields))
            if fields.get("READY") == "1" and self.api_port and not self.on_ready:
                self.on_ready.append(self._status_now())

    def _status_now(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.api_port}/v1/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return {"status": reply.status, "body": json.loads(reply.read())}
        except OSError as exc:
            return {"error": str(exc)}

    def with_key(self, key: str, value: str = "1") -> list[Message]:
        return [m for m in self.messages if m.fields.get(key) == value]

    def pets(self) -> list[float]:
        return [m.at for m in self.with_key("WATCHDOG")]


@contextlib.contextmanager
def listening(*, abstract: bool = False) -> Iterator[Listener]:
    with tempfile.TemporaryDirectory(prefix="hd-sd-") as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"healthd-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(Path(directory) / "notify.sock")
            sock.bind(address)
        listener = Listener(sock, address)
        thread = threading.Thread(target=listener.run, daemon=True)
        thread.start()
        try:
            yield listener
        finally:
            listener._stop.set()
            thread.join(timeout=5)
            sock.close()


def under_systemd(daemon: DaemonProc, listener: Listener, **extra: str) -> None:
    daemon.env["NOTIFY_SOCKET"] = listener.address
    daemon.env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    daemon.env.update(extra)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- the real daemon ----------------------------------------------------------------------------


def test_ready_comes_once_the_workloads_are_loaded_and_the_api_answers(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    for name in ("a", "b"):
        write(daemon, name, "tcp", host="127.0.0.1", port=svc.port)
    port = free_port()
    with listening() as listener:
        listener.api_port = port
        under_systemd(daemon, listener)
        daemon.start("--listen", f"127.0.0.1:{port}")
        wait_for("READY=1", lambda: listener.on_ready, detail=daemon.log)
        ready = listener.with_key("READY")
        assert len(ready) == 1, listener.messages
        assert ready[0].fields["STATUS"].startswith("monitoring 2 workloads"), ready[0]
        # asked by the listener's thread the moment READY=1 arrived: loaded, and answering
        at_ready = listener.on_ready[0]
        assert at_ready.get("status") == 200, at_ready
        body = at_ready["body"]
        assert isinstance(body, dict)
        assert sorted(w["workload"] for w in body["workloads"]) == ["a", "b"]
        # nothing came before READY=1 but READY=1 itself
        assert listener.messages[0].fields.get("READY") == "1", listener.messages[:3]


def test_watchdog_pets_come_at_half_the_interval_and_stop_while_the_daemon_is_stopped(
    daemon: DaemonProc,
) -> None:
    write(daemon, "job", "exec", target="true")
    with listening() as listener:
        under_systemd(daemon, listener)
        daemon.start()
        wait_for("ten pets", lambda: len(listener.pets()) >= 10, detail=daemon.log)
        steady = gaps(listener.pets())
        assert 0.1 <= statistics.median(steady) <= 0.3, steady  # 0.2 s asked
        assert max(steady) < 1.5, steady

        os.kill(daemon.pid, signal.SIGSTOP)  # wedged: nothing of it runs
        stopped_at = time.monotonic()
        try:
            time.sleep(2.0)
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        during = [t for t in listener.pets() if stopped_at + 0.1 < t < resumed_at]
        assert during == [], f"{len(during)} pets while the daemon was stopped"
        after = wait_for(
            "pets to resume",
            lambda: [t for t in listener.pets() if t > resumed_at][3:] or None,
            timeout=10,
            detail=daemon.log,
        )
        assert after
        assert daemon.proc is not None
        assert daemon.proc.poll() is None


def test_a_watchdog_for_another_pid_is_not_petted(daemon: DaemonProc) -> None:
    with listening() as listener:
        under_systemd(daemon, listener, WATCHDOG_PID="1")
        daemon.start()
        wait_for("READY=1", lambda: listener.with_key("READY"), detail=daemon.log)
        time.sleep(1.0)  # five intervals
        assert listener.pets() == []


def test_sighup_and_a_watched_change_are_framed_by_reloading_and_ready(
    daemon: DaemonProc,
) -> None:
    write(daemon, "a", "exec", target="true")
    with listening() as listener:
        under_systemd(daemon, listener)
        daemon.start()
        wait_for("READY=1", lambda: listener.with_key("READY"), detail=daemon.log)
        assert listener.with_key("RELOADING") == []

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for("READY=1 again", lambda: len(listener.with_key("READY")) == 2, detail=daemon.log)
        reloading = listener.with_key("RELOADING")
        assert len(reloading) == 1
        stamp = int(reloading[0].fields["MONOTONIC_USEC"])  # CLOCK_MONOTONIC: the host's
        assert before <= stamp <= before + 10_000_000, (before, stamp)
        ready = listener.with_key("READY")
        assert ready[0].at <= reloading[0].at <= ready[1].at

        write(daemon, "b", "exec", target="true")  # the watcher's reload says so too
        wait_for("READY=1 a third time", lambda: len(listener.with_key("READY")) == 3)
        assert len(listener.with_key("RELOADING")) == 2
        assert listener.with_key("READY")[2].fields["STATUS"].startswith("monitoring 2 ")


def test_sigterm_sends_stopping_before_the_daemon_exits(daemon: DaemonProc) -> None:
    with listening() as listener:
        under_systemd(daemon, listener)
        daemon.start()
        wait_for("READY=1", lambda: listener.with_key("READY"), detail=daemon.log)
        assert daemon.terminate() == 0
        stopping = wait_for("STOPPING=1", lambda: listener.with_key("STOPPING"), timeout=5)
        assert len(stopping) == 1, listener.messages
        assert stopping[0].fields["STATUS"].startswith("stopping")
        assert not [m for m in listener.messages if m.at > stopping[0].at and "READY" in m.fields]


def test_an_abstract_notify_socket_gets_ready(daemon: DaemonProc) -> None:
    with listening(abstract=True) as listener:
        assert listener.address.startswith("@")
        under_systemd(daemon, listener)
        daemon.start()
        wait_for("READY=1", lambda: listener.with_key("READY"), detail=daemon.log)
        wait_for("a pet", listener.pets)


def test_restart_commands_do_not_inherit_the_notify_socket(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    """A service a restart command starts must not take healthd's socket (and watchdog) for
    its own; the rest of the daemon's environment it keeps."""
    dump = tmp_path / "restart-env"
    write(
        daemon,
        "job",
        "exec",
        target="false",
        retries=1,
        auto_restart=True,
        restart_command=("sh", "-c", f"env > {dump}.tmp && mv {dump}.tmp {dump}"),
    )
    with listening() as listener:
        under_systemd(daemon, listener)
        daemon.start()
        wait_for("the restart command", dump.exists, detail=daemon.log)
    names = {line.split("=", 1)[0] for line in dump.read_text().splitlines()}
    assert "HEALTHD_ITEST_MARK" in names  # the daemon's environment, passed on
    assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def test_without_notify_socket_no_notifier_is_made_and_no_log_line_mentions_one(
    daemon: DaemonProc,
) -> None:
    daemon.env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)  # meaningless without the socket
    daemon.start()
    connect(daemon)
    assert daemon.terminate() == 0
    assert "systemd" not in daemon.log()


# -- where the pets come from (in this process, on the daemon's own loop) ---------------------


def in_process(listener: Listener, wedge: str) -> dict[str, float]:
    """A real Scheduler petting through a real notifier every 50 ms, on uvloop; a thread beside
    it sends CONTROL=1 as often. Half-way, ``wedge``: "block" blocks the loop for 1 s;
    "wheel" stops the timer wheel from firing for 1 s while the loop runs on (and sends
    LOOP=1). Returns when the wedge began and ended."""
    log = make_logger(stream=io.StringIO())
    notifier = SystemdNotifier(listener.address, log, watchdog=0.05)
    control = SystemdNotifier(listener.address, log)
    marks: dict[str, float] = {}
    done = threading.Event()

    def thread_pets() -> None:
        while not done.wait(0.05):
            control.send("CONTROL=1")

    async def main() -> None:
        scheduler = Scheduler(log=log, exec_limit=1, lag_warning=1.0)
        scheduler.start_watchdog(0.05, notifier.pet)
        await asyncio.sleep(0.5)
        marks["from"] = time.monotonic()
        if wedge == "block":
            time.sleep(1.0)  # noqa: ASYNC251  (the wedge: the loop does nothing else meanwhile)
        else:
            handle = scheduler.wheel._handle  # what a lost wheel timer looks like
            assert handle is not None
            handle.cancel()
            for _ in range(10):
                notifier.send("LOOP=1")
                await asyncio.sleep(0.1)
            scheduler.wheel._arm(scheduler.wheel._ticks[0])  # found again
        marks["to"] = time.monotonic()
        await asyncio.sleep(0.5)

    beside = threading.Thread(target=thread_pets)
    beside.start()
    try:
        run_loop(main())
    finally:
        done.set()
        beside.join()
        notifier.close()
        control.close()
    time.sleep(0.1)  # the last datagrams read
    return marks


@pytest.mark.parametrize("wedge", ["block", "wheel"])
def test_pets_come_from_the_timer_wheel_not_a_thread(wedge: str) -> None:
    with listening() as listener:
        marks = in_process(listener, wedge)
    inside = (marks["from"] + 0.1, marks["to"] - 0.05)

    def within(times: list[float]) -> list[float]:
        return [t for t in times if inside[0] < t < inside[1]]

    assert within(listener.pets()) == [], f"pets while the {wedge} was wedged"
    # the test can see what it looks for: the thread beside went on all along
    control = [m.at for m in listener.with_key("CONTROL")]
    assert len(within(control)) >= 8, control
    if wedge == "wheel":  # and the loop itself ran: only the wheel had stopped
        assert len(within([m.at for m in listener.with_key("LOOP")])) >= 7
    before = [t for t in listener.pets() if t < marks["from"]]
    after = [t for t in listener.pets() if t > marks["to"]]
    assert len(before) >= 5
    assert len(after) >= 5, "the pets did not resume"
