"""A local user floods the API with idle connections (uid 65534, through setpriv, re-opening
each one the daemon closes) while root and other clients need it: root's token-less
``POST /-/reload`` on the Unix socket and a ``GET /metrics`` from 127.0.0.1 must still be
answered. The socket has its own budget; a TCP source address may hold at most its share; and
a newcomer takes the place of the oldest connection that only waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.harness import ApiClient, DaemonProc, connect, write

NOBODY = 65534
PER_ADDRESS = 64  # the default api.max_connections_per_address
TOTAL = 256  # the default api.max_connections

# Hold N idle connections from each source address (argv: port, N, seconds, sources...),
# opening a new one for each the daemon closes; prints {"settled": true} after 1.5 s, then
# the outcome (see ``outcome``).
FLOOD = r"""
import json, re, selectors, socket, sys, time
port, per, seconds, sources = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
sel = selectors.DefaultSelector()
opened = {}  # socket -> (source, when opened, answered)
most = {s: 0 for s in sources}
refusals = set()
cut = 0  # closed by the daemon without a word: given way to a newcomer
def dial(src):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((src, 0))
    sock.connect_ex(("127.0.0.1", port))
    sel.register(sock, selectors.EVENT_READ)
    opened[sock] = [src, time.monotonic(), False]
start, told = time.monotonic(), False
while time.monotonic() - start < seconds:
    for src in sources:
        for _ in range(min(16, per - sum(1 for o in opened.values() if o[0] == src))):
            dial(src)
    for key, _ in sel.select(0.05):
        sock = key.fileobj
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if data:  # an answer (503): refused
            opened[sock][2] = True
            refusals.update(re.findall(rb'"message": "([^"]*)"', data))
        else:  # closed by the daemon: re-open (next turn)
            cut += not opened[sock][2]
            sel.unregister(sock)
            sock.close()
            del opened[sock]
    now = time.monotonic()
    if now - start > 1.0:  # held: open, silent, for a second (accepted, not refused)
        for src in sources:
            held = sum(1 for o in opened.values() if o[0] == src and not o[2] and now - o[1] > 1)
            most[src] = max(most[src], held)
    if not told and now - start > 1.5:
        print(json.dumps({"settled": True}), flush=True)
        told = True
print(json.dumps({"most": most, "cut": cut, "refusals": sorted(r.decode() for r in refusals)}))
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root: the test speaks as root on the socket")


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="healthd-api-", dir="/tmp") as directory:
        yield Path(directory)


def flood(
    setpriv: str, port: int, per: int, seconds: float, sources: list[str]
) -> subprocess.Popen[str]:
    argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv += [sys.executable, "-c", FLOOD, str(port), str(per), str(seconds), *sources]
    attacker = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert attacker.stdout is not None
    line = attacker.stdout.readline()  # bounded: the script prints it after 1.5 s
    assert json.loads(line) == {"settled": True}, line
    return attacker


def outcome(attacker: subprocess.Popen[str]) -> dict[str, Any]:
    """{"most": {source: most held at once}, "cut": closed unanswered, "refusals": [the
    503s' messages]}"""
    out, _ = attacker.communicate(timeout=30)
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def started(daemon: DaemonProc, sock: Path) -> tuple[ApiClient, ApiClient, int]:
    write(daemon, "db", "tcp", host="127.0.0.1", port=9)
    daemon.daemon_config.write_text(f"api:\n  socket: {sock}\n")
    daemon.start()
    tcp = connect(daemon)
    port = int(str(tcp.where).rsplit(":", 1)[1])
    return tcp, ApiClient(sock), port


def answered_meanwhile(tcp: ApiClient, unix: ApiClient) -> None:
    """Root reloads on the socket, and a scrape from 127.0.0.1 is answered, several times."""
    for _ in range(3):
        reload = unix.call("POST", "/-/reload")
        assert reload.status == 200, reload.text
        scrape = tcp.call("GET", "/metrics")
        assert scrape.status == 200, scrape.text
        assert "healthd_workload_up" in scrape.text
        time.sleep(0.2)


def test_a_flood_from_one_address_is_held_to_its_share_and_locks_no_one_out(
    daemon: DaemonProc, sock_dir: Path, require_binary: Callable[[str], str]
) -> None:
    """100 connections from 127.0.0.2: fewer than the listener takes, more than one address
    may hold."""
    setpriv = require_binary("setpriv")
    tcp, unix, port = started(daemon, sock_dir / "api.sock")
    attacker = flood(setpriv, port, PER_ADDRESS + 36, 4.0, ["127.0.0.2"])
    try:
        answered_meanwhile(tcp, unix)
    finally:
        seen = outcome(attacker)
    # Each connection past the 64th pushed out the oldest silent one of 127.0.0.2.
    assert seen["cut"] >= 36, seen
    assert seen["most"]["127.0.0.2"] <= PER_ADDRESS, seen


def test_a_flood_from_many_addresses_and_127_0_0_1_still_locks_no_one_out(
    daemon: DaemonProc, sock_dir: Path, require_binary: Callable[[str], str]
) -> None:
    """Eight addresses at their share fill the TCP listener twice over, and the attacker holds
    its share of 127.0.0.1 too: root on the socket and a scrape from 127.0.0.1 go through."""
    setpriv = require_binary("setpriv")
    tcp, unix, port = started(daemon, sock_dir / "api.sock")
    sources = ["127.0.0.1", *(f"127.0.0.{n}" for n in range(2, 10))]
    attacker = flood(setpriv, port, PER_ADDRESS, 4.0, sources)
    try:
        answered_meanwhile(tcp, unix)
    finally:
        seen = outcome(attacker)
    assert seen["cut"] >= 64, seen  # silent ones pushed out for newcomers, ours among them
