"""Soak: 100,000 checks of every kind, run by the real daemon, with its resources bounded.

HTTP against nginx (answers 200 and 503) and against a server that never answers (timeouts),
TCP to nginx and to a closed port, exec checks that succeed, fail and time out. Sampled from
/proc/PID every half second: open descriptors, child processes, zombies, resident memory.
Each must stay within a fixed bound from the end of the warm-up to the end of the run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import (
    MARK_VAR,
    DaemonProc,
    connect,
    free_port,
    kill_group,
    nginx_conf,
    pids_with,
    wait_for,
)
from integration.harness import write as write_workload

from .soak_tools import Sample, SilentServer, children_of, sample

CHECKS = 100_000
DEADLINE = 240.0  # seconds: far past what the run takes on a 2-core machine (see the rows)
WARM_UP = 10.0  # connections opened, caches filled, the first checks of every kind done
# A snapshot catches connections and pipes in flight; a leak of one descriptor in a thousand
# checks would still pass this by far.
FD_SLACK = 32
RSS_GROWTH_MB = 8
EXEC_WORKLOADS = 14


@pytest.fixture
def nginx(tmp_path: Path, require_binary: Callable[[str], str]) -> Iterator[int]:
    """A real nginx on a free loopback port; stopped (its whole group) at the end."""
    binary = require_binary("nginx")
    directory = tmp_path / "nginx"
    directory.mkdir()
    info = subprocess.run([binary, "-V"], capture_output=True, text=True, check=True)
    port = free_port()
    conf = nginx_conf(
        directory,
        port,
        info.stderr,
        ok_path="/ok",
        down_body="down",
        connections=2048,
        http_extra="    keepalive_requests 100000;\n",
    )
    argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    proc = subprocess.Popen(
        [*argv, "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for("nginx to listen", lambda: _accepts(port), timeout=10)
        yield port
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def workloads(daemon: DaemonProc, web: int, silent: int) -> dict[str, str]:
    """About 1,300 checks a second; exec checks cost a millisecond of CPU each, so few.
    Returns workload -> what it must show (ok, fail, timeout)."""
    closed = free_port()
    kinds: dict[str, str] = {}

    def add(name: str, kind: str, expect: str, interval: float, **fields: object) -> None:
        write_workload(daemon, name, kind, interval=interval, retries=3, **fields)
        kinds[name] = expect

    for i in range(120):
        add(f"web{i}", "http", "ok", 0.2, host="127.0.0.1", port=web, target="/ok")
    for i in range(30):
        add(f"web503-{i}", "http", "fail", 0.2, host="127.0.0.1", port=web, target="/x")
    for i in range(10):
        add(f"mute{i}", "http", "timeout", 0.2, host="127.0.0.1", port=silent, timeout=0.3)
    for i in range(70):
        add(f"tcp{i}", "tcp", "ok", 0.2, host="127.0.0.1", port=web)
    for i in range(20):
        add(f"refused{i}", "tcp", "fail", 0.2, host="127.0.0.1", port=closed)
    for i in range(8):
        add(f"true{i}", "exec", "ok", 0.5, target="true")
    for i in range(4):
        add(f"false{i}", "exec", "fail", 0.5, target="exit 3")
    for i in range(2):  # the shell and its sleep are killed at the deadline
        add(f"hang{i}", "exec", "timeout", 0.5, target="sleep 30", timeout=0.3)
    assert sum(1 for k in kinds if k[:4] in ("true", "fals", "hang")) == EXEC_WORKLOADS
    return kinds


def test_100k_checks_keep_fds_children_zombies_and_memory_bounded(
    daemon: DaemonProc, nginx: int, mark: str
) -> None:
    silent = SilentServer()
    kinds = workloads(daemon, nginx, silent.start())
    samples: list[Sample] = []
    try:
        daemon.start()
        api = connect(daemon)
        pid = daemon.pid
        began = time.monotonic()
        total, polled = 0, 0.0
        while total < CHECKS:
            now = time.monotonic() - began
            assert now < DEADLINE, f"only {total} checks in {DEADLINE}s:\n{daemon.log()[-3000:]}"
            samples.append(sample(pid, now))
            if now - polled >= 2.0:
                polled = now
                statuses = api.get("/v1/status")["workloads"]
                total = sum(s["total_checks"] for s in statuses)
            time.sleep(0.5)
        took = time.monotonic() - began
        samples.append(sample(pid, took))
        statuses = {s["workload"]: s for s in api.get("/v1/status")["workloads"]}
        summary = api.get("/healthz")

        # Idle: every workload removed by a reload; nothing the checks started may be left.
        for path in daemon.config_dir.iterdir():
            path.unlink()
        os.kill(pid, signal.SIGHUP)
        daemon.wait_event("config_reloaded")
        wait_for("the daemon to have no child", lambda: not children_of(pid), timeout=5)
        idle = sample(pid, time.monotonic() - began)
        leftovers = [p for p in _marked(mark) if p != pid]  # nginx does not carry the mark
        assert daemon.terminate() == 0, daemon.log()[-3000:]
    finally:
        silent.stop()

    where = _figures(samples, took, total)
    warm = [s for s in samples if s.at <= WARM_UP]
    after = [s for s in samples if s.at > WARM_UP]
    assert len(warm) >= 10, where
    assert len(after) >= 20, where
    fd_bound = max(s.fds for s in warm) + FD_SLACK
    assert max(s.fds for s in after) <= fd_bound, where
    rss_bound = max(s.rss_kb for s in warm) + RSS_GROWTH_MB * 1024
    assert max(s.rss_kb for s in after) <= rss_bound, where
    assert max(s.children for s in samples) <= EXEC_WORKLOADS, where
    # A zombie is fine for a moment (it exited, its pidfd wakes the loop); not two samples.
    lingering = {z for a, b in itertools.pairwise(samples) for z in a.zombies if z in b.zombies}
    assert not lingering, f"zombies left unreaped for 0.5 s or more: {lingering}\n{where}"
    assert not idle.children, where
    assert not idle.zombies, where
    assert not leftovers, f"processes the checks started outlived them: {leftovers}"
    assert "Traceback" not in daemon.log()

    # Every kind really ran and really failed or timed out as it should.
    assert summary["checks_total"] >= CHECKS, summary
    for name, expect in kinds.items():
        status = statuses[name]
        assert status["total_checks"] >= 10, status
        if expect == "ok":
            assert status["total_fails"] == 0, status
            assert status["state"] == "healthy", status
        else:
            assert status["total_fails"] == status["total_checks"], status
            assert status["state"] == "unhealthy", status
        if expect == "timeout":
            assert "0.3s" in status["last_error"] or "timed out" in status["last_error"], status
    print(f"\nsoak: {where}")


def _marked(mark: str) -> list[int]:
    return pids_with(f"{MARK_VAR}={mark}", in_environ=True)


def _figures(samples: list[Sample], took: float, total: int) -> str:
    fds = [s.fds for s in samples]
    rss = [s.rss_kb // 1024 for s in samples]
    return (
        f"{total} checks in {took:.1f}s ({total / took:.0f}/s); fds {min(fds)}..{max(fds)}, "
        f"RSS {min(rss)}..{max(rss)} MB, children <= {max(s.children for s in samples)}; "
        f"samples (s, fds, MB, children): "
        + " ".join(f"{s.at:.0f}/{s.fds}/{s.rss_kb // 1024}/{s.children}" for s in samples[::6])
    )
