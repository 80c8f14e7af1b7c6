"""The integration tests' harness: real processes and servers on loopback only.

Plain helpers, used by the fixtures in ``conftest.py`` and by the tests themselves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from healthd.config import editor
from healthd.config.workload import WorkloadConfig

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
    # argv -> the argv to run instead (e.g. under setpriv, as an unprivileged user)
    wrap: Callable[[list[str]], list[str]] | None = None

    @property
    def daemon_config(self) -> Path:
        """The daemon config file passed with --daemon-config (tests may write it first)."""
        return self.log_path.with_name("healthd.yaml")

    def api_endpoints(self) -> dict[str, str] | None:
        """Where this run's API listens, from daemon.json; None until it is written."""
        try:
            summary = json.loads((self.status_dir / "daemon.json").read_text())
        except FileNotFoundError:
            return None
        if self.proc is None or summary.get("pid") != self.proc.pid:
            return None  # written by an earlier run
        api = summary.get("api")
        return api if isinstance(api, dict) and api else None

    def api_url(self, timeout: float = 15.0) -> str:
        """http://HOST:PORT of this run's API (waits for the daemon to write daemon.json)."""

        def listen() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            return (self.api_endpoints() or {}).get("listen")

        return "http://" + wait_for("the API address in daemon.json", listen, timeout, self.log)

    def start(self, *extra: str) -> DaemonProc:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        argv = [PY, "-m", "healthd", "run", "--config-dir", str(self.config_dir)]
        argv += ["--status-dir", str(self.status_dir)]
        if "--listen" not in extra:  # a free port each time: tests never fight over 9780
            argv += ["--listen", "127.0.0.1:0"]
        # exec checks get none of the daemon's environment but what is passed: the marker
        # must reach them, so that the test's cleanup finds whatever they leave running
        argv += ["--pass-env", MARK_VAR, "--daemon-config", str(self.daemon_config), *extra]
        if not self.daemon_config.exists():
            self.daemon_config.write_text("# written by the test harness\n")
        if self.wrap is not None:
            argv = self.wrap(argv)
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


def write(daemon: DaemonProc, name: str, type: str, **fields: Any) -> Path:
    """A workload file, written as ``healthd add`` would; fast schedule unless overridden.
    Returns its path."""
    values: dict[str, Any] = {"interval": 0.2, "timeout": 0.5, "restart_delay": 0.2} | fields
    path, _ = editor.write(daemon.config_dir, WorkloadConfig(workload=name, type=type, **values))
    return path


def for_workload(lines: list[str], name: str) -> list[str]:
    """The log lines (from ``DaemonProc.events``) about workload ``name``."""
    return [line for line in lines if f"workload={name}" in line.split()]


def write_token(path: Path, token: str, mode: int = 0o600) -> Path:
    """``token`` in ``path``, never readable by others while written, then given ``mode``
    (0600, the default, is the only mode the API and the CLI accept). Returns ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, mode)
    return path


def with_token(daemon: DaemonProc, *, socket_path: Path | None = None, mode: int = 0o600) -> str:
    """The daemon config: ``api.token_file`` naming a new token file ``api.token`` (with
    ``mode``) next to it, and ``api.socket`` if ``socket_path`` is given (the TCP listener is
    the harness's ``--listen``). Returns the token."""
    token = secrets.token_urlsafe(24)
    token_file = write_token(daemon.daemon_config.with_name("api.token"), token, mode)
    lines = ["api:", f"  token_file: {token_file}"]
    if socket_path is not None:
        lines.append(f"  socket: {socket_path}")
    daemon.daemon_config.write_text("\n".join(lines) + "\n")
    return token


# == The API as a client sees it (added for test_api_endpoints.py) ================================


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over the API's Unix socket."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


@dataclass(frozen=True)
class ApiReply:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str
    body: Any  # the parsed JSON; None when the body is empty or not JSON

    def error(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` object of an error answer (fails the test otherwise)."""
        assert isinstance(self.body, dict), self.text
        error = self.body.get("error")
        assert isinstance(error, dict), self.text
        assert set(error) == {"status", "reason", "message"}, self.text
        assert error["status"] == self.status, self.text
        return error


@dataclass
class ApiClient:
    """The stdlib's HTTP client, one connection per request. ``where`` is the base URL
    (``http://HOST:PORT``) or the path of the Unix socket; ``token`` is sent as a bearer."""

    where: str | Path
    token: str | None = None
    timeout: float = 10.0

    def connect(self) -> http.client.HTTPConnection:
        if isinstance(self.where, Path):
            return UnixHTTPConnection(self.where, self.timeout)
        url = urllib.parse.urlsplit(self.where)
        return http.client.HTTPConnection(url.hostname or "", url.port, timeout=self.timeout)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiReply:
        """``method path``; ``body`` is sent as JSON, ``raw`` as it is."""
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn = self.connect()
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read().decode()
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return ApiReply(response.status, got, text, parsed)

    def get(self, path: str) -> Any:
        """The JSON of a GET that must answer 200."""
        reply = self.call("GET", path)
        assert reply.status == 200, f"GET {path}: {reply.status} {reply.text}"
        return reply.body

    def post(self, path: str, body: Any = None) -> Any:
        """The JSON of a POST that must answer 200."""
        reply = self.call("POST", path, body)
        assert reply.status == 200, f"POST {path}: {reply.status} {reply.text}"
        return reply.body

    def wait_status(
        self, workload: str, probe: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """GET /v1/status/WORKLOAD until ``probe`` accepts it (live, unlike statuses.json)."""
        last: list[Any] = [None]

        def check() -> dict[str, Any] | None:
            reply = self.call("GET", f"/v1/status/{workload}")
            last[0] = reply.body if reply.status == 200 else reply.text
            status = reply.body if reply.status == 200 else None
            return status if status is not None and probe(status) else None

        return wait_for(f"API status of {workload}", check, timeout, lambda: f"last: {last[0]}")


def connect(daemon: DaemonProc, token: str | None = None) -> ApiClient:
    """A client of this run's TCP listener (sending ``token`` as a bearer, if given), once
    GET /healthz answers 200: the daemon has started monitoring."""
    client = ApiClient(daemon.api_url(), token)
    wait_for(
        "GET /healthz to answer 200",
        lambda: client.call("GET", "/healthz").status == 200,
        detail=daemon.log,
    )
    return client


# -- the event journal, as a test reads it -------------------------------------------------


def deliveries(daemon: DaemonProc, sink: str) -> list[dict[str, Any]]:
    """The sink's deliveries with their events, from events.db (read-only)."""
    path = daemon.status_dir / "events.db"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        try:
            found = db.execute(
                "SELECT d.event_id, d.reminder, d.state, d.attempts, d.last_error, e.type, "
                "e.workload FROM deliveries d JOIN events e ON e.id = d.event_id "
                "WHERE d.sink = ? ORDER BY d.id",
                (sink,),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # the daemon is creating the database right now
            raise
    return [dict(r) for r in found]


def nginx_conf(
    directory: Path,
    port: int,
    build_info: str,
    *,
    ok_path: str,
    down_body: str,
    connections: int,
    http_extra: str = "",
) -> Path:
    """A self-contained nginx config, everything under ``directory``, loopback only: 200 "ok"
    on ``ok_path``, 503 ``down_body`` elsewhere. ``build_info`` is ``nginx -V``'s output (temp
    paths are set only for the modules this nginx has)."""
    temps = "".join(
        f"    {name}_temp_path {directory}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--without-http_{name}_module" not in build_info
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log;\nevents {{ worker_connections {connections}; }}\n"
        f"http {{\n    access_log off;\n{temps}{http_extra}"
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        f'        location = {ok_path} {{ return 200 "ok"; }}\n'
        f'        location / {{ return 503 "{down_body}"; }}\n    }}\n}}\n'
    )
    return conf
