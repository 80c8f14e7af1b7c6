"""A local user (uid 65534, through setpriv) opens many ``GET /v1/events/stream`` connections
and never reads them, with a small receive buffer, while events with sizeable payloads are
committed. Each must be dropped once it has taken nothing for 30 s (the README's promise), and
meanwhile hold only a bounded send queue of the daemon's; a client that reads, slowly, is
served all along."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from integration.harness import DaemonProc, connect, write

NOBODY = 65534
STALL = 30.0  # the README: a stream client that takes nothing for 30 s is disconnected
NEVER_READERS = 40  # from 127.0.0.2: fewer than one address may hold (64)
SEND_QUEUE_BOUND = 256 * 1024  # twice the bounded buffer (64 KiB, which the kernel doubles)
NOISY = 6  # exec workloads failing every 0.2 s with 3.5 KB of output: ~100 KB/s of events

# Open N streams from 127.0.0.2 with a 4 KiB receive buffer, never read a byte; print
# {"open": N}, then, once all are closed or after SECONDS, each one's seconds until it was
# closed and whether by a reset (argv: port, N, seconds).
NEVER_READ = r"""
import errno, json, select, socket, sys, time
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
poll, opened, closed = select.poll(), {}, {}
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    socks.append(s)
    opened[s.fileno()] = time.monotonic()
    poll.register(s, select.POLLRDHUP | select.POLLERR | select.POLLHUP)
print(json.dumps({"open": n}), flush=True)
by = {s.fileno(): s for s in socks}
end = time.monotonic() + seconds
while time.monotonic() < end and len(closed) < n:
    for fd, _ in poll.poll(100):
        if fd not in closed:
            err = by[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            closed[fd] = [round(time.monotonic() - opened[fd], 2), err == errno.ECONNRESET]
            poll.unregister(fd)
print(json.dumps({"closed": list(closed.values()), "open": n - len(closed)}), flush=True)
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root: the attacker is run as another uid")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class SendQueues:
    """The kernel's send queues of the daemon's connections to 127.0.0.2 (from
    /proc/PID/net/tcp: tx_queue, the bytes not yet acknowledged), sampled until stopped."""

    pid: int
    port: int
    most: int = 0  # the largest one seen on an open connection
    closed_holding: int = 0  # the most bytes seen held by connections the daemon had closed
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        open_ = held = 0
        for line in Path(f"/proc/{self.pid}/net/tcp").read_text().splitlines()[1:]:
            local, remote, state, queues = line.split()[1:5]
            if int(local.split(":")[1], 16) != self.port or not remote.startswith("0200007F:"):
                continue
            queued = int(queues.split(":")[0], 16)
            if state == "01":  # established
                open_ = max(open_, queued)
            else:  # FIN_WAIT1, CLOSING, LAST_ACK: closed, still delivering
                held += queued
        self.most = max(self.most, open_)
        self.closed_holding = max(self.closed_holding, held)
        self.samples += 1

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.sample()


@dataclass
class SlowReader:
    """A stream client on 127.0.0.1 that reads 4 KiB every 50 ms (slower than the events
    come): when each event id arrived, and whether the daemon closed it."""

    port: int
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    closed: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            request = f"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n"
            sock.sendall(request.encode())
            pending = b""
            while not self.stop.wait(0.05):
                try:
                    data = sock.recv(4096)
                except OSError as exc:
                    self.closed = repr(exc)
                    return
                if not data:
                    self.closed = "EOF"
                    return
                pending += data
                *lines, pending = pending.split(b"\n")
                now = time.monotonic()
                self.arrivals += [(now, int(x[4:])) for x in lines if x.startswith(b"id: ")]


def test_never_reading_stream_clients_are_dropped_in_time_and_hold_little(
    daemon: DaemonProc, require_binary: Callable[[str], str]
) -> None:
    setpriv = require_binary("setpriv")
    noise = ("sh", "-c", "head -c 3500 /dev/zero | tr '\\0' x; exit 1")
    for n in range(NOISY):
        write(daemon, f"noisy{n}", "exec", command=noise, interval=0.2, timeout=2.0)
    daemon.start()
    port = int(str(connect(daemon).where).rsplit(":", 1)[1])
    daemon.wait_event("check_fail")
    time.sleep(1.0)  # past the start: the daemon's own memory has settled
    rss_before = rss_mb(daemon.pid)

    queues = SendQueues(daemon.pid, port)
    reader = SlowReader(port)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (queues, reader)]
    argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv += [sys.executable, "-c", NEVER_READ, str(port), str(NEVER_READERS), str(STALL + 4)]
    attacker = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None
        assert json.loads(attacker.stdout.readline()) == {"open": NEVER_READERS}
        opened = time.monotonic()
        for thread in threads:
            thread.start()
        out, _ = attacker.communicate(timeout=STALL + 15)
        queues.sample()  # once more, after the last drop
        rss_after = rss_mb(daemon.pid)
    finally:
        attacker.kill()
        attacker.wait()
        queues.stop.set()
        reader.stop.set()
        for thread in threads:
            thread.join(timeout=5)
    seen = json.loads(out.strip().splitlines()[-1])

    # Each was dropped about 30 s after it stopped taking bytes (at once: its buffer is tiny
    # and the events fill it in well under a second), with a reset: it knows.
    assert seen["open"] == 0, seen
    times = sorted(t for t, _ in seen["closed"])
    assert all(reset for _, reset in seen["closed"]), seen
    assert times[0] >= STALL - 1, times
    assert times[-1] <= STALL + 3, times
    # Meanwhile each held at most a bounded send queue, and nothing once dropped.
    assert queues.samples >= 20, queues
    assert 0 < queues.most <= SEND_QUEUE_BOUND, queues
    assert queues.closed_holding == 0, queues
    assert rss_after - rss_before < 20, (rss_before, rss_after)

    # The slow reader was never dropped, and got events all along.
    assert reader.closed == "", reader.closed
    ids = [event_id for _, event_id in reader.arrivals]
    assert ids == sorted(set(ids)), "events came twice or out of order"
    end = time.monotonic()
    for start in range(0, int(end - opened) - 5, 5):
        window = [t for t, _ in reader.arrivals if 0 <= t - opened - start < 5]
        assert window, f"the reader got no event {start}-{start + 5} s into the attack"
