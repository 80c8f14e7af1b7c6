"""Hostile targets for the fault suite, and what a test reads about the daemon under test.

A ``Hostile`` server listens on a loopback address of its own and runs one handler thread per
connection: plain blocking sockets, so a handler can misbehave byte by byte (trickle, reset,
stream forever) and count exactly what it sent. Everything it opened is closed by ``stop``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from integration.harness import (
    PY,
    ApiClient,
    DaemonProc,
    alive,
    connect,
    free_port,
    wait_for,
    write,
)


def loopback_host() -> str:
    """A loopback address few others use (any 127.x.y.z works on lo with no setup)."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


@dataclass
class Conn:
    """What one handler saw of its connection."""

    sock: socket.socket
    stop: threading.Event
    sent: int = 0
    request: bytes = b""
    accepted_at: float = field(default_factory=time.monotonic)
    peer_gone_at: float | None = None  # monotonic: when a send failed or the peer closed

    def read_request(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.request:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.request += chunk
        return self.request

    def send(self, data: bytes) -> bool:
        """Send it all; False (and ``peer_gone_at`` set) once the client is gone."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.peer_gone_at = time.monotonic()
            return False
        self.sent += len(data)
        return True

    def peer_closed(self) -> bool:
        """Whether the client closed its end (seen without blocking)."""
        self.sock.setblocking(False)
        try:
            closed = self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            closed = False
        except OSError:
            closed = True
        finally:
            self.sock.setblocking(True)
        if closed and self.peer_gone_at is None:
            self.peer_gone_at = time.monotonic()
        return closed

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the server stops; False when it stops."""
        return not self.stop.wait(seconds)

    def reset(self) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send an RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Handler = Callable[[Conn], None]


@dataclass
class Hostile:
    handler: Handler
    host: str = field(default_factory=loopback_host)
    port: int = 0
    conns: list[Conn] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _listener: socket.socket | None = None

    def start(self) -> Hostile:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept, name=f"hostile-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = Conn(sock, self._stop)
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: Conn) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def close_listener(self) -> None:
        """Stop accepting, for good, while the connections already accepted go on being
        served: a server out of descriptors, or whose acceptor thread died."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown first: the accept thread's poll holds the socket open for up to 0.1 s
            # after close(); shutdown stops a listening socket at once
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.conns)


@contextlib.contextmanager
def hostile(handler: Handler, host: str | None = None) -> Iterator[Hostile]:
    server = Hostile(handler, host or loopback_host()).start()
    try:
        yield server
    finally:
        server.stop()


# -- the daemon under test, seen from outside --------------------------------------------------

CANARY = "canary"


def start_with_canary(daemon: DaemonProc, *extra: str) -> ApiClient:
    """Start the daemon with a healthy workload besides the faulty ones; its API client.

    The healthy one is an HTTP check of the daemon's own /healthz: a real server that is
    up exactly as long as the test needs it, wherever the daemon runs (namespaces too)."""
    port = free_port()
    write(daemon, CANARY, "http", host="127.0.0.1", port=port, target="/healthz", interval=0.1)
    daemon.start(*extra, "--listen", f"127.0.0.1:{port}")
    return connect(daemon)


def canary_keeps_going(client: ApiClient, checks: int = 5, workload: str = CANARY) -> None:
    """The healthy ``workload`` goes on being checked, and healthy, while the fault lasts."""
    before = client.get(f"/v1/status/{workload}")
    now = before["total_checks"]
    status = client.wait_status(workload, lambda s: s["total_checks"] >= now + checks)
    assert status["state"] == "healthy", status
    # (its very first check may have come before the API listened)
    assert status["total_fails"] == before["total_fails"], status


def history(client: ApiClient, workload: str) -> list[dict[str, Any]]:
    """The workload's recent check results, newest first."""
    results: list[dict[str, Any]] = client.get(f"/v1/workloads/{workload}/history")["results"]
    return results


def checks_done(client: ApiClient, workload: str) -> int:
    total: int = client.get(f"/v1/status/{workload}")["total_checks"]
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] == "Z":
                found.append(int(entry.name))
    return found


def gone(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until none of ``pids`` runs (zombies count as gone); fail naming the survivors."""
    wait_for(
        f"processes {pids} to be gone",
        lambda: not any(alive(p) for p in pids),
        timeout,
        lambda: f"still running: {[p for p in pids if alive(p)]}",
    )


def read_pids(path: Path) -> list[int]:
    return [int(w) for w in path.read_text().split()] if path.exists() else []


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


# -- network namespaces ------------------------------------------------------------------------


@contextlib.contextmanager
def netns(ip: str, tag: str) -> Iterator[str]:
    """A network namespace with only its own lo, up; deleted (by name) afterwards."""
    name = f"hdf-{tag}-{os.getpid()}-{random.randint(0, 1 << 30):x}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False, timeout=10)


# Listens on each port given in argv and accepts forever (closing what it accepts); plain
# sockets, as http.server would stall on getfqdn() in a namespace without DNS.
LISTENER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.close()
"""


def start_listener(prefix: list[str], ports: list[int], env: dict[str, str]) -> Any:
    """The LISTENER in a process of its own (inside a namespace with ``prefix``); ready."""
    proc = subprocess.Popen(
        [*prefix, PY, "-c", LISTENER, *map(str, ports)],
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


@contextlib.contextmanager
def daemon_in(
    ns_prefix: list[str], tmp_path: Path, env: dict[str, str]
) -> Iterator[tuple[DaemonProc, ApiClient]]:
    """A daemon inside a namespace (``ip netns exec`` execs it in place, so the PID is the
    daemon's own), and a client of its API through a Unix socket (the namespace's loopback is
    out of our reach; the filesystem is shared). Killed afterwards."""
    daemon = DaemonProc(tmp_path / "config", tmp_path / "status", env, tmp_path / "daemon.log")
    daemon.wrap = lambda argv: [*ns_prefix, *argv]
    daemon.config_dir.mkdir(exist_ok=True)
    socket_path = tmp_path / "api.sock"
    daemon.daemon_config.write_text(f"api:\n  socket: {socket_path}\n")
    try:
        yield daemon, ApiClient(socket_path)
    finally:
        daemon.kill()


def wait_api(daemon: DaemonProc, client: ApiClient) -> None:
    """Until the API answers GET /healthz: monitoring has started."""

    def up() -> bool:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log()}")
        assert isinstance(client.where, Path)
        with socket.socket(socket.AF_UNIX) as probe:  # the harness's client leaks a failed one
            try:
                probe.connect(str(client.where))
            except OSError:
                return False
        return client.call("GET", "/healthz").status == 200

    wait_for("GET /healthz over the API socket", up, detail=daemon.log)


FLOOD_CLIENT = Path(__file__).resolve().parents[2] / "bench" / "flood_client.py"


AS_NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def python_for_nobody(setpriv: str) -> str:
    """A Python that uid 65534 may run (the test's may live in root's home)."""
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run(
            [setpriv, *AS_NOBODY, python, "-c", "import asyncio"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return python
    pytest.fail("no Python that uid 65534 can run")


def flood_client_argv(setpriv: str) -> list[str]:
    """``bench/flood_client.py`` as uid 65534 runs it, up to its own arguments. The script is
    passed as its source: the checkout may sit in a directory only root may enter (a clone in
    ``mktemp -d``)."""
    python = python_for_nobody(setpriv)
    return [setpriv, *AS_NOBODY, python, "-c", FLOOD_CLIENT.read_text()]
