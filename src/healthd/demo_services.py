"""Tiny real services for ``healthd demo`` (and its tests): HTTP and TCP servers on loopback.

    python -m healthd.demo_services serve --kind http --port 18080 [--crash-after 8]
    python -m healthd.demo_services start --kind http --port 18080 --pidfile F --log L
    python -m healthd.demo_services stop --pidfile F

``start`` is what a restart command looks like: it stops the old instance named by the
pidfile (if any), starts a detached new one and returns once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_HTTP_OK)
        await writer.drain()
    writer.close()


async def _tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        writer.write(b"+PONG\r\n")
        await writer.drain()
    writer.close()


async def serve(kind: str, port: int, crash_after: float | None) -> None:
    handler = _http if kind == "http" else _tcp
    server = await asyncio.start_server(handler, "127.0.0.1", port, reuse_address=True)
    if crash_after is not None:
        # A crash, not a clean exit: the process is gone and the port refuses connections.
        asyncio.get_running_loop().call_later(crash_after, os._exit, 70)
    async with server:
        await server.serve_forever()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent has not reaped it yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def start(kind: str, port: int, pidfile: Path, log: Path, crash_after: float | None) -> int:
    stop(pidfile)
    argv = [
        sys.executable,
        "-m",
        "healthd.demo_services",
        "serve",
        "--kind",
        kind,
        "--port",
        str(port),
    ]
    if crash_after is not None:
        argv += ["--crash-after", str(crash_after)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"{kind} service on port {port} exited with {proc.returncode}", file=sys.stderr)
            return 1
        if _accepts(port):
            return 0
        time.sleep(0.02)
    print(f"{kind} service on port {port} did not start listening", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m healthd.demo_services")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "start"):
        p = sub.add_parser(name)
        p.add_argument("--kind", choices=["http", "tcp"], required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--crash-after", type=float, default=None)
        if name == "start":
            p.add_argument("--pidfile", type=Path, required=True)
            p.add_argument("--log", type=Path, required=True)
    p = sub.add_parser("stop")
    p.add_argument("--pidfile", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.kind, args.port, args.crash_after))
        return 0
    if args.command == "start":
        return start(args.kind, args.port, args.pidfile, args.log, args.crash_after)
    stop(args.pidfile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
