"""A read-only flood of healthd's API: connections that keep pipelined GETs outstanding.

Run as a child process (by file path, so it needs nothing but the stdlib; the fault suite runs
it as another user too):

    python flood_client.py --port P [--host 127.0.0.1 | --unix PATH] [--connections 32]
        [--depth 16] [--path /v1/status] [--duration 10] [--nice 19]

Each connection writes ``--depth`` requests at once and then one more for every answer it
reads, so the server always has requests waiting on every connection: the most a client can
ask of it without opening more connections. An answer with ``Connection: close`` (or a closed
connection) is followed by a new connection. ``--nice`` lowers the client's own priority first,
so that it does not take the CPU from the daemon it floods (the attack of the finding: a
client at nice 19 that still slowed every check).

At the end (``--duration`` seconds, or SIGTERM/SIGINT) it prints one JSON line on stdout:
``requests`` answered, ``statuses`` (answers by status code), ``bytes`` of bodies read,
``connections`` opened, ``errors`` (connections that failed or broke), ``seconds`` run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
RECONNECT_PAUSE = 0.05  # after a refused or broken connection: a flood, not a busy loop


@dataclass
class Tally:
    requests: int = 0
    bytes: int = 0
    connections: int = 0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def to_json(self, seconds: float) -> dict[str, object]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "bytes": self.bytes,
            "connections": self.connections,
            "errors": self.errors,
            "seconds": round(seconds, 3),
        }


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    unix: str | None
    path: str
    depth: int

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix is not None:
            return await asyncio.open_unix_connection(self.unix, limit=MAX_HEAD)
        return await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)

    def request(self) -> bytes:
        host = "localhost" if self.unix is not None else f"{self.host}:{self.port}"
        return f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """(status, body bytes, whether the server closes after it) of the next answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    await reader.readexactly(length)
    return status, length, close


async def flood_one(target: Target, tally: Tally) -> None:
    """One connection after another, each kept ``depth`` requests deep, until cancelled."""
    request = target.request()
    while True:
        writer = None
        try:
            reader, writer = await target.open()
            tally.connections += 1
            writer.write(request * target.depth)
            while True:
                status, length, close = await read_answer(reader)
                tally.requests += 1
                tally.bytes += length
                tally.statuses[status] += 1
                if close:
                    break
                writer.write(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            tally.errors += 1
            await asyncio.sleep(RECONNECT_PAUSE)
        finally:
            if writer is not None:
                writer.close()


async def flood(target: Target, connections: int, duration: float, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(flood_one(target, tally)) for _ in range(connections)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pipelined GET flood of an HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix", default=None, help="a Unix socket instead of --host/--port")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--depth", type=int, default=16, help="requests kept outstanding per conn")
    p.add_argument("--path", default="/v1/status")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--nice", type=int, default=0, help="lower the client's priority by this")
    args = p.parse_args(argv)
    if args.unix is None and not 0 < args.port < 65536:
        p.error("give --port (or --unix)")
    if args.nice:
        os.nice(args.nice)
    target = Target(args.host, args.port, args.unix, args.path, max(1, args.depth))
    tally = Tally()
    started = time.monotonic()
    asyncio.run(flood(target, max(1, args.connections), args.duration, tally))
    print(json.dumps(tally.to_json(time.monotonic() - started)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
