"""Local users on the loopback TCP listener are told apart by their uid (issue 16).

Every local user connects from 127.0.0.1, or binds any of 127.0.0.0/8, so the address says
nothing about who is asking. The kernel knows the uid of a loopback client's socket
(sock_diag); budgets are per uid. The attacks, as they were found:

- uid 65534 floods pipelined ``GET /v1/status`` over TCP from 127.0.0.1. Before: all loopback
  clients shared one budget of expensive reads, so Prometheus (another uid; here the test,
  as root) waited a second and got 429 for every scrape.
- uid 65534 holds event streams (never cut for a newcomer) from many 127.x addresses. Before:
  each address had its own allowance, so one user could fill the listener and root's
  connections got 503; root had no places kept on TCP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from integration.harness import DaemonProc, connect, write

from .targets import flood_client_argv, python_for_nobody

NOBODY = 65534
OTHER_USERS = (65533, 65532)  # uids of no one: the kernel needs no account to run as them
# The test's own reads while the flood runs: fewer than the budget's 20 a second
SCRAPES = 16
SCRAPE_EVERY = 0.2
SCRAPE_FOR = 4.0  # seconds at most, within the flood's 6
PROMPT = 0.5  # seconds: an answer later than this waited for a turn (before: 1 s, then 429)
# A small TCP listener for the connection test: 8 per client, and the last 8 kept for root
MAX_CONNECTIONS = 32
PER_CLIENT = 8

# Run as a uid: open N event streams to the TCP listener (argv: port, N, sources...), from the
# sources in turn; print {"statuses": {status: count}} once each is answered, then hold the
# streams (without reading them) until stdin closes, or 60 s at most.
HOLD_STREAMS = r"""
import json, socket, sys
port, count, sources = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
held, statuses = [], {}
for n in range(count):
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((sources[n % len(sources)], 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
    head = b""
    while b"\r\n" not in head:
        piece = sock.recv(4096)
        if not piece:
            break
        head += piece
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "none"
    statuses[status] = statuses.get(status, 0) + 1
    if status == "200":
        held.append(sock)
    else:
        sock.close()
print(json.dumps({"statuses": statuses}), flush=True)
import select
select.select([sys.stdin], [], [], 60)
"""


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the security suite runs as root (CI runs as root)")
        pytest.skip("needs root: the test is the root user that other users must not crowd out")


def as_user(setpriv: str, uid: int) -> list[str]:
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def tcp_port(daemon: DaemonProc) -> int:
    port = urllib.parse.urlsplit(daemon.api_url()).port
    assert port is not None
    return port


@pytest.mark.needs("setpriv")
def test_a_status_flood_from_another_uid_leaves_other_users_reads_prompt(
    daemon: DaemonProc, require_binary: Callable[[str], str]
) -> None:
    setpriv = require_binary("setpriv")
    write(daemon, "db", "tcp", host="127.0.0.1", port=9)
    daemon.start()
    scraper = connect(daemon)  # the test, as root, over TCP from 127.0.0.1 like Prometheus
    argv = [*flood_client_argv(setpriv), "--port", str(tcp_port(daemon))]
    argv += ["--connections", "32", "--depth", "16", "--path", "/v1/status", "--duration", "6"]
    flood = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # 512 requests outstanding: its burst of 40 is long spent
        answers: list[tuple[str, int, float]] = []
        scraping = time.monotonic()
        for n in range(SCRAPES):  # or for SCRAPE_FOR seconds: the flood must outlast them
            if time.monotonic() - scraping > SCRAPE_FOR:
                break
            path = "/metrics" if n % 2 else "/v1/status"
            began = time.monotonic()
            reply = scraper.call("GET", path)
            answers.append((path, reply.status, round(time.monotonic() - began, 3)))
            time.sleep(SCRAPE_EVERY)
        outlasted = flood.poll() is None
        out, err = flood.communicate(timeout=30)
    finally:
        flood.kill()
    assert flood.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    # Every read of the test answered, none waited for a turn (before: 1 s, then 429)
    assert [a for a in answers if a[1] != 200] == [], (answers, report)
    assert len(answers) == SCRAPES, (answers, report)
    slowest = max(a[2] for a in answers)
    assert slowest < PROMPT, (answers, report)
    # ... all while the flood ran, held to its own budget
    assert outlasted, report
    assert report["statuses"].get("429", 0) > 0, report
    assert report["statuses"].get("200", 0) >= 40, report


@contextmanager
def holding(
    run_as: list[str], port: int, count: int, sources: list[str]
) -> Iterator[dict[str, int]]:
    """``run_as`` (setpriv and a Python) holds ``count`` event streams from ``sources``;
    yields its answers' statuses."""
    argv = [*run_as, "-c", HOLD_STREAMS, str(port), str(count), *sources]
    holder = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # bounded: each connection has a 10 s timeout
        assert line, holder.communicate(timeout=10)[1] if holder.poll() is not None else ""
        statuses: dict[str, int] = json.loads(line)["statuses"]
        yield statuses
    finally:
        holder.kill()
        holder.communicate(timeout=10)  # and its pipes closed


def open_stream(port: int) -> tuple[socket.socket, str]:
    """An event stream from 127.0.0.1, as the test's uid: the socket and the answer's status."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
    head = sock.recv(4096)
    return sock, head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "none"


@pytest.mark.needs("setpriv")
def test_one_uid_from_many_addresses_holds_one_allowance_and_root_gets_in(
    daemon: DaemonProc, require_binary: Callable[[str], str]
) -> None:
    """uid 65534 asks for the whole listener from eight addresses and gets one client's
    allowance; two more users take theirs, which fills what is not kept for root; root's
    streams and scrape from 127.0.0.1 still get in, and a fourth user does not."""
    setpriv = require_binary("setpriv")
    write(daemon, "db", "tcp", host="127.0.0.1", port=9)
    daemon.daemon_config.write_text(
        f"api:\n  max_connections: {MAX_CONNECTIONS}\n  max_connections_per_address: {PER_CLIENT}\n"
    )
    daemon.start()
    scraper = connect(daemon)
    port = tcp_port(daemon)
    sources = [f"127.0.0.{n}" for n in range(2, 10)]
    own: list[socket.socket] = []
    python = python_for_nobody(setpriv)  # any uid may run what nobody may

    def user(uid: int) -> list[str]:
        return [*as_user(setpriv, uid), python]

    with (
        holding([*as_user(setpriv, NOBODY), python], port, MAX_CONNECTIONS, sources) as nobody,
        holding(
            [*as_user(setpriv, OTHER_USERS[0]), python], port, PER_CLIENT, ["127.0.0.1"]
        ) as second,
        holding(
            [*as_user(setpriv, OTHER_USERS[1]), python], port, PER_CLIENT, ["127.0.0.1"]
        ) as third,
    ):
        try:
            statuses = []
            for _ in range(4):
                sock, status = open_stream(port)
                own.append(sock)
                statuses.append(status)
            scrape = scraper.call("GET", "/metrics")
            with holding(user(65531), port, 1, ["127.0.0.1"]) as fourth:
                pass
        finally:
            for sock in own:
                sock.close()
    held = {"65534": nobody, "65533": second, "65532": third, "65531": fourth}
    # root's streams and scrape get in (before: 503, the listener full of 65534's streams)
    assert statuses == ["200"] * 4, (statuses, held)
    assert scrape.status == 200, (scrape.text, held)
    # one client's allowance, whatever its addresses: before, 32 (4 from each of 8)
    assert nobody == {"200": PER_CLIENT, "503": MAX_CONNECTIONS - PER_CLIENT}, held
    assert second == third == {"200": PER_CLIENT}, held
    # the other users filled what is not kept for root
    assert fourth == {"503": 1}, held


def test_a_tcp_peer_that_is_root_still_needs_the_token(daemon: DaemonProc) -> None:
    """The kernel says the test's TCP connections are root's: changes still need the token,
    for a page in a browser run by root could send them too."""
    write(daemon, "db", "tcp", host="127.0.0.1", port=9)
    daemon.start()
    client = connect(daemon)
    reload = client.call("POST", "/-/reload")
    assert reload.status == 403, reload.text
    assert "api.token_file" in reload.error()["message"]
    pause = client.call("POST", "/v1/workloads/db/pause")
    assert pause.status == 403, pause.text
    assert client.get("/v1/status/db")["paused"] is False
