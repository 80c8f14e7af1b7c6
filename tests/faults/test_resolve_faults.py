"""Addresses that cannot be had: a ``host`` that does not resolve, and machinectl missing,
failing or hanging. The check says why, never hangs, and the other workloads go on."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from integration.harness import DaemonProc, free_port, wait_for, write

from .targets import (
    Conn,
    canary_keeps_going,
    daemon_in,
    gone,
    hostile,
    netns,
    read_pids,
    script,
    start_listener,
    start_with_canary,
    wait_api,
)


def closes(conn: Conn) -> None:
    """Accept, then hang up: all a tcp check needs."""


def with_path(daemon: DaemonProc, bin_dir: Path) -> None:
    """The daemon finds programs on PATH in ``bin_dir`` only (machinectl, or no machinectl)."""
    bin_dir.mkdir(exist_ok=True)
    daemon.env = daemon.env | {"PATH": str(bin_dir)}


@pytest.mark.parametrize(
    ("machinectl", "source"),
    [
        (None, "fallback: machinectl: No such file or directory"),
        (
            "echo \"Could not get path to machine: No machine '$2' known\" >&2; exit 1",
            "fallback: machinectl: exit status 1: "
            "Could not get path to machine: No machine 'web' known",
        ),
        ('echo "Addresses="', "fallback: machinectl reported no address"),
        # the control: the fake is what the daemon runs
        ('[ "$*" = "show web -p Addresses" ] && echo "Addresses=127.0.0.1 ::1"', "machinectl"),
    ],
    ids=["missing", "failing", "no-address", "working"],
)
def test_machinectl_missing_or_failing_falls_back_and_says_why(
    daemon: DaemonProc, tmp_path: Path, machinectl: str | None, source: str
) -> None:
    bin_dir = tmp_path / "bin"
    with_path(daemon, bin_dir)
    if machinectl is not None:
        script(bin_dir / "machinectl", machinectl + "\n")
    with hostile(closes, "127.0.0.1") as srv:
        write(daemon, "web", "tcp", port=srv.port, timeout=1.0)  # no host: machinectl
        client = start_with_canary(daemon)
        status = client.wait_status("web", lambda s: s["state"] == "healthy")
        canary_keeps_going(client)
    assert status["address"] == "127.0.0.1"
    assert status["address_source"] == source
    warned = [x for x in daemon.events("address_fallback") if "workload=web" in x.split()]
    if source.startswith("fallback"):
        assert len(warned) == 1, daemon.log()  # said once, not at every check
        assert "address=127.0.0.1" in warned[0]
    else:
        assert warned == []
    assert daemon.terminate() == 0


def test_machinectl_hanging_is_killed_at_its_deadline_and_checks_go_on(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    with_path(daemon, bin_dir)
    pids = tmp_path / "machinectl.pids"
    script(
        bin_dir / "machinectl",
        f"echo $$ >> {pids}\n/bin/sleep 600 &\necho $! >> {pids}\n"
        "echo waiting for systemd-machined\nwait\n",
    )
    port = free_port()  # nothing listens: every failed check looks the address up again
    write(daemon, "web", "tcp", port=port, timeout=0.5, retries=1, interval=0.1)
    started = time.monotonic()
    client = start_with_canary(daemon)
    status = client.wait_status("web", lambda s: s["state"] == "unhealthy", timeout=10)
    # first checks are spread over 1s after the start; then the 2s lookup, then the check
    assert time.monotonic() - started < 4.5
    assert status["address"] == "127.0.0.1"
    assert status["address_source"] == (
        "fallback: machinectl: no answer within 2s, process group killed: "
        "waiting for systemd-machined"
    )
    assert status["last_error"] == (
        f"TCP check failed: 127.0.0.1:{port}: connection refused (127.0.0.1 is the fallback "
        "address: machinectl: no answer within 2s, process group killed: "
        "waiting for systemd-machined)"
    )
    first = read_pids(pids)
    assert len(first) == 2
    gone(first, timeout=0.5)  # the script and its child, killed at the deadline
    canary_keeps_going(client, checks=10)  # checked all along, 0.1s apart
    # Each later check looks again and waits 2s for the hung lookup, no more.
    now = status["total_checks"]
    began = time.monotonic()
    client.wait_status("web", lambda s: s["total_checks"] >= now + 2, timeout=10)
    assert time.monotonic() - began < 5.5
    wait_for("the last lookup to be killed", lambda: len(read_pids(pids)) >= 6)
    assert daemon.terminate() == 0
    gone(read_pids(pids))


def test_host_that_does_not_resolve_fails_at_once_with_the_reason(
    tmp_path: Path, env: dict[str, str], require_binary: Callable[[str], str]
) -> None:
    """In a loopback-only namespace, so that not even a DNS query leaves the machine."""
    ip = require_binary("ip")
    port = random.randrange(20000, 30000)
    with netns(ip, "dns") as ns:
        inside = [ip, "netns", "exec", ns]
        target = start_listener(inside, [port], env)
        try:
            with daemon_in(inside, tmp_path, env) as (daemon, client):
                for kind in ("tcp", "http"):
                    write(daemon, kind, kind, host="nosuch.invalid", port=port, timeout=2.0)
                write(daemon, "open", "tcp", host="127.0.0.1", port=port, interval=0.1)
                daemon.start()
                wait_api(daemon, client)
                for kind, where in (
                    ("tcp", f"TCP check failed: nosuch.invalid:{port}: "),
                    ("http", f"HTTP check failed: http://nosuch.invalid:{port}/healthz: "),
                ):
                    status = client.wait_status(kind, lambda s: s["state"] == "unhealthy")
                    assert status["last_error"] in (
                        f"{where}temporary failure in name resolution",  # no DNS server here
                        f"{where}name or service not known",
                    ), status
                    assert status["address"] == "nosuch.invalid"
                    assert status["address_source"] == "host"
                    assert status["last_check_duration_seconds"] < 0.5  # not the 2s timeout
                # The lookups that fail go on failing; the open workload goes on being
                # checked beside them, 0.1s apart (how many it had done by the time both were
                # unhealthy depends on how the first checks fell, so count from here).
                began = time.monotonic()
                canary_keeps_going(client, checks=5, workload="open")
                assert time.monotonic() - began < 3.0  # five checks 0.1s apart, not held up
                assert daemon.terminate() == 0
        finally:
            target.kill()
            target.wait(timeout=10)
            if target.stdout is not None:
                target.stdout.close()
