"""What the measured workloads and the sentinels check, and how the bench counts checks.

Everything listens on 127.0.0.1 only.

- ``NginxTarget`` (``nginx.py``): nginx in a temporary prefix with a generated config.
- ``BuiltinTarget``: ``target_server.py`` in a child process, with a stats port of its own.
- ``ExecTarget``: the command ``printf x >> FILE``; the file's size counts the checks.
- Sentinels: a separate built-in server (http, https, tcp) or ``test -e FLAG`` (exec) that the
  bench breaks on purpose to time healthd's detection.

For https the measured target and the sentinels' server present a certificate for 127.0.0.1
signed by a CA made for the run (``certs.py``), which the workloads trust with ``ca_file``.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.certs import CertFiles
from bench.errors import BenchError
from bench.loopback import LOOPBACK, START_TIMEOUT, check_target, http_get
from bench.nginx import NginxTarget
from bench.proc import spawn, stop_group, tail
from bench.protocols import Counts, Sentinel, Target, TlsStats
from bench.workloads import HTTP_KINDS, CheckTarget

SERVER_SCRIPT = Path(__file__).with_name("target_server.py")


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


@dataclass(frozen=True)
class ServerStats:
    """The built-in server's counters, on its target port."""

    requests: int
    accepted: int
    tls: TlsStats


class BuiltinServer:
    """``target_server.py`` as a child process in a session of its own; TLS with ``tls``."""

    def __init__(self, label: str, log_path: Path, tls: CertFiles | None = None) -> None:
        self.label = label
        self.log_path = log_path
        self.tls = tls
        self.port = 0
        self.stats_port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, str(SERVER_SCRIPT), "--host", LOOPBACK, "--label", self.label]
        if self.tls is not None:
            argv += ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
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

    def stats(self) -> ServerStats:
        """The counters so far."""
        got = json.loads(http_get(self.stats_port, "/stats"))
        versions = {str(k): int(v) for k, v in got["tls_versions"].items()}
        tls = TlsStats(int(got["tls_handshakes"]), int(got["tls_resumed"]), versions)
        return ServerStats(int(got["requests"]), int(got["accepted"]), tls)

    def stop(self) -> None:
        """Close the listeners and connections (SIGTERM), and wait for the process to end."""
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, grace=5.0)


class BuiltinTarget:
    name = "builtin"

    def __init__(self, kind: str, workdir: Path, tls: CertFiles | None = None) -> None:
        self.kind = kind
        self.server = BuiltinServer(f"healthd-bench-target:{workdir}", workdir / "target.log", tls)

    def start(self) -> CheckTarget:
        self.server.start()
        return check_target(self.kind, self.server.port, self.server.tls)

    def counts(self) -> Counts:
        stats = self.server.stats()
        return Counts(stats.requests if self.kind in HTTP_KINDS else stats.accepted, stats.accepted)

    def tls_stats(self) -> TlsStats | None:
        return self.server.stats().tls if self.server.tls is not None else None

    def stop(self) -> None:
        self.server.stop()


# -- exec --------------------------------------------------------------------------------------


class ExecTarget:
    """``printf x >> FILE``: every check appends one byte."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> CheckTarget:
        self.path.touch()
        return CheckTarget(f"printf x >> {shlex.quote(str(self.path))}")

    def counts(self) -> Counts:
        try:
            return Counts(self.path.stat().st_size, None)
        except FileNotFoundError:
            return Counts(0, None)

    def tls_stats(self) -> TlsStats | None:
        return None

    def stop(self) -> None:
        pass


# -- sentinels ---------------------------------------------------------------------------------


class ServerSentinel:
    """A built-in server of its own (TLS with ``tls``); breaking it closes its listener and
    connections."""

    def __init__(self, kind: str, workdir: Path, tls: CertFiles | None = None) -> None:
        self.kind = kind
        self.server = BuiltinServer(
            f"healthd-bench-sentinel:{workdir}", workdir / "sentinel.log", tls
        )

    def start(self) -> CheckTarget:
        self.server.start()
        return check_target(self.kind, self.server.port, self.server.tls)

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


def make_target(
    kind: str, choice: str, nginx: str | None, workdir: Path, tls: CertFiles | None = None
) -> Target:
    """The measured target for ``kind`` (not started); ``choice`` is auto, nginx or builtin;
    ``tls``: the server's certificate, for https."""
    if kind == "exec":
        return ExecTarget(workdir / "exec-count")
    if choice == "nginx" or (choice == "auto" and nginx):
        if not nginx:
            raise BenchError("--target nginx: nginx is not on PATH")
        return NginxTarget(kind, nginx, workdir / "nginx", tls)
    return BuiltinTarget(kind, workdir, tls)


def make_sentinel(kind: str, workdir: Path, tls: CertFiles | None = None) -> Sentinel:
    if kind == "exec":
        return FlagSentinel(workdir / "sentinel-flag")
    return ServerSentinel(kind, workdir, tls)
