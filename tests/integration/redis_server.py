"""A real redis-server on 127.0.0.1 for the tests of tcp send/expect and exec expect_output."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .harness import alive, free_port, wait_for


@dataclass
class Redis:
    port: int
    pid: int

    def stop(self) -> None:
        """Wedge it: the kernel still accepts connections into the listen backlog."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def running_redis(
    binary: str, directory: Path, env: dict[str, str], *extra: str, password: str = ""
) -> Iterator[Redis]:
    """redis-server daemonized in ``directory`` (no persistence); killed by pid at the end."""
    directory.mkdir()
    pidfile = directory / "redis.pid"
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly"]
    argv += ["no", "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(directory)]
    if password:
        argv += ["--requirepass", password]
    subprocess.run([*argv, *extra], env=env, check=True, timeout=30, stdin=subprocess.DEVNULL)

    def written_pid() -> int | None:
        with contextlib.suppress(FileNotFoundError):
            text = pidfile.read_text().strip()
            return int(text) if text.isdigit() else None
        return None

    pid = wait_for("redis' pidfile", written_pid)

    def answers() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            return reply.startswith(b"+PONG") or (bool(password) and reply.startswith(b"-NOAUTH"))
        return False

    try:
        wait_for("redis to answer PING", answers)
        yield Redis(port, pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)  # a stopped process dies only once it runs
        wait_for(f"redis pid {pid} to exit", lambda: not alive(pid), timeout=10)
