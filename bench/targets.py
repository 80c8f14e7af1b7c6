"""What the measured workloads and the sentinels check, and how the bench counts checks.

Everything listens on 127.0.0.1 only.

- ``NginxTarget``: nginx in a temporary prefix with a generated config: ``/healthz`` -> 200 on
  one port, ``stub_status`` on another (the bench's own stub_status requests are subtracted).
- ``BuiltinTarget``: ``target_server.py`` in a child process, with a stats port of its own.
- ``ExecTarget``: the command ``printf x >> FILE``; the file's size counts the checks.
- Sentinels: a separate built-in server (http, tcp) or ``test -e FLAG`` (exec) that the bench
  breaks on purpose to time healthd's detection.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Protocol

from bench.errors import BenchError
from bench.proc import spawn, stop_group
from bench.workloads import CheckTarget, http_target, tcp_target

LOOPBACK = "127.0.0.1"
SERVER_SCRIPT = Path(__file__).with_name("target_server.py")
START_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    """Body of ``GET http://127.0.0.1:PORT/PATH`` (no proxy is ever consulted)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {LOOPBACK}:{port}{path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


def check_target(kind: str, port: int) -> CheckTarget:
    return http_target(port, LOOPBACK) if kind == "http" else tcp_target(port, LOOPBACK)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Target(Protocol):
    """The loopback target of the N measured workloads."""

    name: str  # "nginx", "builtin" or "file"

    def start(self) -> CheckTarget:
        """Start serving; returns what the workloads must check."""
        ...

    def count(self) -> int:
        """Checks seen so far: http requests, tcp accepted connections or exec appends."""
        ...

    def stop(self) -> None: ...


class Sentinel(Protocol):
    """The target of the sentinel workloads, which the bench can break."""

    def start(self) -> CheckTarget: ...

    def break_(self) -> None:
        """Make every check of the sentinels fail from now on; returns once that holds."""
        ...

    def stop(self) -> None: ...


# -- the built-in server -----------------------------------------------------------------------


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


class BuiltinServer:
    """``target_server.py`` as a child process in a session of its own."""

    def __init__(self, label: str, log_path: Path) -> None:
        self.label = label
        self.log_path = log_path
        self.port = 0
        self.stats_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, str(SERVER_SCRIPT), "--host", LOOPBACK, "--label", self.label]
        with self.log_path.open("ab") as log:
            self._proc = spawn(argv, stdout=subprocess.PIPE, stderr=log)
        assert self._proc.stdout is not None
        try:
            line = _read_line(self._proc.stdout, START_TIMEOUT)
        finally:
            self._proc.stdout.close()
        try:
            ports = json.loads(line)
            self.port, self.stats_port = int(ports["port"]), int(ports["stats_port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            raise BenchError(
                f"the built-in target did not start: {tail(self.log_path) or 'no output'}"
            ) from None

    def counts(self) -> tuple[int, int]:
        """(requests, accepted connections) on the target port so far."""
        stats = json.loads(http_get(self.stats_port, "/stats"))
        return int(stats["requests"]), int(stats["accepted"])

    def stop(self) -> None:
        """Close the listeners and connections (SIGTERM), and wait for the process to end."""
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, grace=5.0)


class BuiltinTarget:
    name = "builtin"

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.server = BuiltinServer(f"healthd-bench-target:{workdir}", workdir / "target.log")

    def start(self) -> CheckTarget:
        self.server.start()
        return check_target(self.kind, self.server.port)

    def count(self) -> int:
        requests, accepted = self.server.counts()
        return requests if self.kind == "http" else accepted

    def stop(self) -> None:
        self.server.stop()


# -- nginx -------------------------------------------------------------------------------------


def nginx_config(prefix: Path, port: int, stub_port: int) -> str:
    temp = {
        name: prefix / "tmp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    return f"""# generated by the healthd bench
worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};

    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        location = /healthz {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location / {{
            return 404;
        }}
    }}

    server {{
        listen {LOOPBACK}:{stub_port};
        location = /status {{
            stub_status;
        }}
    }}
}}
"""


class NginxTarget:
    """nginx with its own prefix directory and config; stopped with SIGQUIT (graceful)."""

    name = "nginx"

    def __init__(self, kind: str, binary: str, prefix: Path) -> None:
        self.kind = kind
        self.binary = binary
        self.prefix = prefix
        self.port = 0
        self.stub_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._polls = 0  # stub_status requests (and connections) the bench made itself

    def start(self) -> CheckTarget:
        for attempt in range(3):  # a port taken between free_port() and nginx's bind: retry
            try:
                self._start()
                break
            except BenchError:
                self.stop()
                if attempt == 2:
                    raise
        return check_target(self.kind, self.port)

    def _start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        self.stub_port = free_port()
        while self.stub_port == self.port:
            self.stub_port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(nginx_config(self.prefix, self.port, self.stub_port))
        error_log = self.prefix / "error.log"
        argv = [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(error_log)]
        with (self.prefix / "stdout.log").open("ab") as out:
            self._proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise BenchError(
                    f"nginx exited ({self._proc.returncode}): "
                    f"{tail(error_log) or tail(self.prefix / 'stdout.log')}"
                )
            with contextlib.suppress(OSError, BenchError):
                self._stub()
                return
            if time.monotonic() > deadline:
                raise BenchError(f"nginx did not answer within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def _stub(self) -> tuple[int, int]:
        """(accepted connections, requests) from stub_status, the bench's own polls removed."""
        conn = http.client.HTTPConnection(LOOPBACK, self.stub_port, timeout=5)
        try:
            conn.connect()
            self._polls += 1  # nginx counts this connection, and the request below, at once
            conn.request("GET", "/status", headers={"Connection": "close"})
            response = conn.getresponse()
            text = response.read().decode("ascii", "replace")
        finally:
            conn.close()
        lines = text.splitlines()
        if response.status != 200 or len(lines) < 3:
            raise BenchError(f"unexpected stub_status answer: {text[:200]!r}")
        accepts, _handled, requests = (int(x) for x in lines[2].split())
        return accepts - self._polls, requests - self._polls

    def count(self) -> int:
        accepts, requests = self._stub()
        return requests if self.kind == "http" else accepts

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        pid = proc.pid
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.prefix / "nginx.pid").read_text().split()[0])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGQUIT)  # graceful: finish what is in flight, then exit
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        stop_group(proc, signal.SIGKILL, grace=5.0)


# -- exec --------------------------------------------------------------------------------------


class ExecTarget:
    """``printf x >> FILE``: every check appends one byte."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> CheckTarget:
        self.path.touch()
        return CheckTarget(f"printf x >> {shlex.quote(str(self.path))}")

    def count(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        pass


# -- sentinels ---------------------------------------------------------------------------------


class ServerSentinel:
    """A built-in server of its own; breaking it closes its listener and connections."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.server = BuiltinServer(f"healthd-bench-sentinel:{workdir}", workdir / "sentinel.log")

    def start(self) -> CheckTarget:
        self.server.start()
        return check_target(self.kind, self.server.port)

    def break_(self) -> None:
        self.server.stop()

    def stop(self) -> None:
        self.server.stop()


class FlagSentinel:
    """``test -e FLAG``; breaking it deletes the flag file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> CheckTarget:
        self.path.touch()
        return CheckTarget(f"test -e {shlex.quote(str(self.path))}")

    def break_(self) -> None:
        self.path.unlink(missing_ok=True)

    def stop(self) -> None:
        pass


def make_target(kind: str, choice: str, nginx: str | None, workdir: Path) -> Target:
    """The measured target for ``kind`` (not started); ``choice`` is auto, nginx or builtin."""
    if kind == "exec":
        return ExecTarget(workdir / "exec-count")
    if choice == "nginx" or (choice == "auto" and nginx):
        if not nginx:
            raise BenchError("--target nginx: nginx is not on PATH")
        return NginxTarget(kind, nginx, workdir / "nginx")
    return BuiltinTarget(kind, workdir)


def make_sentinel(kind: str, workdir: Path) -> Sentinel:
    if kind == "exec":
        return FlagSentinel(workdir / "sentinel-flag")
    return ServerSentinel(kind, workdir)
