"""How the CLI talks to a running daemon: find its API, call it, tell "not running" apart.

Where the daemon listens is looked up in this order: ``--api`` (a URL or a socket path); the
daemon.json the running daemon writes beside statuses.json (it names the address it really
bound); the daemon config file (``api.socket``, ``api.listen``); the default address.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from healthd.config.daemon_file import DEFAULT_LISTEN, DaemonFile
from healthd.errors import HealthdError

TIMEOUT = 60.0  # a "check now" may wait for an exec slot on a busy host


class NotRunning(HealthdError):
    """No daemon answers where it should listen."""


class ApiCallError(HealthdError):
    """The daemon answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """A TCP ``host:port`` or a Unix socket path."""

    address: str
    unix: bool

    def __str__(self) -> str:
        return self.address if self.unix else f"http://{self.address}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def parse_endpoint(text: str) -> Endpoint:
    """``--api``: http://HOST:PORT, HOST:PORT, or a path to the Unix socket."""
    if text.startswith("/"):
        return Endpoint(text, unix=True)
    parts = urlsplit(text if "//" in text else f"http://{text}")
    if parts.scheme != "http" or not parts.netloc:
        raise HealthdError(f"--api {text!r}: use http://HOST:PORT or a socket path")
    return Endpoint(parts.netloc, unix=False)


def running_daemon(status_dir: Path) -> tuple[int | None, dict[str, str]]:
    """(pid, API endpoints) from daemon.json if the daemon that wrote it still runs."""
    try:
        summary = json.loads((status_dir / "daemon.json").read_bytes())
        pid = int(summary["pid"])
        api = summary.get("api") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    if not _is_healthd(pid):
        return None, {}
    return pid, {k: str(v) for k, v in api.items()} if isinstance(api, dict) else {}


def _is_healthd(pid: int) -> bool:
    """Whether ``pid`` runs a healthd daemon (``healthd run``, ``python -m healthd run`` or the
    demo), not some other process that got the pid of a daemon long gone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    script = any(arg.rsplit(b"/", 1)[-1] == b"healthd" for arg in argv[:2])
    module = any(pair == (b"-m", b"healthd") for pair in itertools.pairwise(argv))
    return (script or module) and (b"run" in argv or b"demo" in argv)


def candidates(api: str | None, status_dir: Path, daemon_file: DaemonFile) -> list[Endpoint]:
    """Where to look for the daemon, best first."""
    if api:
        return [parse_endpoint(api)]
    out: list[Endpoint] = []
    if (status_dir / "daemon.json").exists():
        # The daemon of this status dir says where it listens; when it no longer runs, do
        # not ask whatever else listens at the configured address about other workloads.
        pid, bound = running_daemon(status_dir)
        if pid is None:
            return []
        # The socket first for root: it needs no token to change anything.
        if "socket" in bound and os.geteuid() == 0:
            out.append(Endpoint(bound["socket"], unix=True))
        if "listen" in bound:
            out.append(Endpoint(bound["listen"], unix=False))
        if "socket" in bound and os.geteuid() != 0:
            out.append(Endpoint(bound["socket"], unix=True))
        return out
    settings = daemon_file.api
    if settings.socket is not None:
        out.append(Endpoint(str(settings.socket), unix=True))
    if settings.listen is not None:
        out.append(Endpoint(str(settings.listen), unix=False))
    if not out:
        out.append(Endpoint(DEFAULT_LISTEN, unix=False))
    unique: list[Endpoint] = []
    for endpoint in out:
        if endpoint not in unique:
            unique.append(endpoint)
    return unique


class ApiClient:
    def __init__(self, endpoints: list[Endpoint], token: str | None = None) -> None:
        self.endpoints = endpoints
        self.token = token
        self.endpoint: Endpoint | None = None  # the one that answered

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer; raises NotRunning or ApiCallError."""
        tried = []
        for endpoint in [self.endpoint] if self.endpoint else self.endpoints:
            try:
                status, data = self._request(endpoint, method, path, body)
            except (ConnectionRefusedError, FileNotFoundError, socket.gaierror) as exc:
                tried.append(f"{endpoint} ({exc.strerror or exc})")
                continue
            except (OSError, http.client.HTTPException) as exc:
                raise HealthdError(f"the daemon at {endpoint} did not answer: {exc}") from None
            self.endpoint = endpoint
            if status >= 400:
                message = _error_message(data) or f"HTTP {status}"
                raise ApiCallError(status, message)
            return data
        if not tried:
            raise NotRunning("daemon.json in the status dir names no live daemon with an API")
        raise NotRunning("no daemon answers at " + ", ".join(tried))

    def _request(
        self, endpoint: Endpoint, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, Any]:
        conn: http.client.HTTPConnection
        if endpoint.unix:
            conn = _UnixConnection(endpoint.address, TIMEOUT)
        else:
            host, _, port = endpoint.address.rpartition(":")
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=TIMEOUT)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token and method != "GET":
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None


def _error_message(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        return str(message) if message else None
    return None
