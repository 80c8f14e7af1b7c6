"""The integration tests' harness: real processes and servers on loopback only.

Plain helpers, used by the fixtures in ``conftest.py`` and by the tests themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

PY = sys.executable
MARK_VAR = "HEALTHD_ITEST_MARK"
T = TypeVar("T")


# -- small helpers ------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "PID (comm) STATE ...": comm may contain spaces and parentheses, so split at the last ")"
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 15.0,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail else ""
            pytest.fail(f"gave up after {timeout}s waiting for {what}{more}")
        time.sleep(0.05)


def pids_with(needle: str, *, in_environ: bool = False) -> list[int]:
    """Live processes whose command line (or environment) contains ``needle``. Only looks."""
    found = []
    raw = needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            data = (entry / ("environ" if in_environ else "cmdline")).read_bytes()
        except OSError:
            continue
        if raw in data and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m healthd ARGS``, captured."""
    return subprocess.run(
        [PY, "-m", "healthd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# -- demo services (python -m healthd.demo_services) ----------------------------------------------


@dataclass
class Service:
    kind: str
    port: int
    pidfile: Path
    log: Path

    def start_argv(self) -> list[str]:
        """The command that (re)starts this service: also what a restart_command runs."""
        return [
            PY,
            "-m",
            "healthd.demo_services",
            "start",
            "--kind",
            self.kind,
            "--port",
            str(self.port),
            "--pidfile",
            str(self.pidfile),
            "--log",
            str(self.log),
        ]

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def kill(self) -> None:
        """Kill -9 its process group, for real (a crash), and wait until it is gone."""
        pid = self.pid
        kill_group(pid)
        wait_for(f"service pid {pid} to die", lambda: not alive(pid), timeout=5)


@dataclass
class Services:
    env: dict[str, str]
    directory: Path
    started: list[Service] = field(default_factory=list)

    def new(self, kind: str = "http", port: int | None = None) -> Service:
        """A service description (not started): for restart commands that start it later."""
        n = len(self.started)
        service = Service(
            kind,
            port or free_port(),
            self.directory / f"svc{n}.pid",
            self.directory / f"svc{n}.log",
        )
        self.started.append(service)
        return service

    def start(self, kind: str = "http", port: int | None = None) -> Service:
        """Start a detached service; returns once it accepts connections."""
        service = self.new(kind, port)
        subprocess.run(service.start_argv(), env=self.env, check=True, timeout=30)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            with contextlib.suppress(OSError, ValueError):
                kill_group(service.pid)


# -- the daemon as a subprocess --------------------------------------------------------------------


@dataclass
class DaemonProc:
    """``python -m healthd run`` in its own process group, stderr to a file."""

    config_dir: Path
    status_dir: Path
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> DaemonProc:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        argv = [PY, "-m", "healthd", "run", "--config-dir", str(self.config_dir)]
        argv += ["--status-dir", str(self.status_dir), *extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self, name: str, since: int = 0) -> list[str]:
        """Log lines whose event is exactly ``name`` (event=restart is not event=restart_done),
        from character ``since`` of the log on."""
        lines = self.log()[since:].splitlines()
        return [line for line in lines if f"event={name}" in line.split()]

    def wait_event(self, name: str, since: int = 0, timeout: float = 15.0) -> list[str]:
        return wait_for(
            f"event={name} in the log", lambda: self.events(name, since), timeout, self.log
        )

    def statuses(self) -> list[dict[str, Any]] | None:
        """statuses.json, or None before the daemon has written it."""
        try:
            data = (self.status_dir / "statuses.json").read_text()
        except FileNotFoundError:
            return None
        parsed = json.loads(data)  # written atomically: always whole, always valid
        assert isinstance(parsed, list)
        return parsed

    def status(self, workload: str) -> dict[str, Any] | None:
        return next((s for s in self.statuses() or [] if s["workload"] == workload), None)

    def wait_status(
        self, workload: str, probe: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            status = self.status(workload)
            return status if status is not None and probe(status) else None

        def detail() -> str:
            return f"last status: {self.status(workload)}\nlog:\n{self.log()}"

        return wait_for(f"status of {workload}", check, timeout, detail)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM; returns the exit code (fails if it does not exit in ``timeout``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the daemon's whole process group and reap it."""
        if self.proc is None:
            return
        kill_group(self.proc.pid)
        self.proc.wait(timeout=10)
