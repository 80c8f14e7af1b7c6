"""TCP checks whose SYNs are dropped: inside a network namespace that has only its own
loopback, so no packet can leave the machine; the daemon and its targets both run in it."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from integration.harness import kill_group, write

from .targets import daemon_in, fd_count, netns, start_listener, wait_api


def test_dropped_syns_time_out_and_other_workloads_go_on(
    tmp_path: Path, env: dict[str, str], require_binary: Callable[[str], str]
) -> None:
    ip, iptables = require_binary("ip"), require_binary("iptables")
    dropped, open_port = random.sample(range(20000, 30000), 2)
    with netns(ip, "syn") as ns:
        inside = [ip, "netns", "exec", ns]
        rule = ["INPUT", "-p", "tcp", "--dport", str(dropped), "-j", "DROP"]
        subprocess.run([*inside, iptables, "-A", *rule], check=True, timeout=10)
        target = start_listener(inside, [dropped, open_port], env)  # both ports listen
        try:
            with daemon_in(inside, tmp_path, env) as (daemon, client):
                common = {"host": "127.0.0.1", "interval": 0.1, "retries": 2}
                write(daemon, "dropped", "tcp", port=dropped, timeout=0.5, **common)
                write(daemon, "open", "tcp", port=open_port, timeout=0.5, **common)
                daemon.start()
                wait_api(daemon, client)
                status = client.wait_status("dropped", lambda s: s["state"] == "unhealthy")
                assert status["last_error"] == f"timed out after 500ms: tcp 127.0.0.1:{dropped}"

                fds = fd_count(daemon.pid)
                now = status["total_checks"]
                client.wait_status("dropped", lambda s: s["total_checks"] >= now + 8, timeout=20)
                results = client.get("/v1/workloads/dropped/history")["results"]
                assert len(results) >= 8
                for result in results:
                    assert not result["ok"], result
                    assert 0.5 <= result["duration_seconds"] < 0.8, result
                assert fd_count(daemon.pid) <= fds + 2  # a socket left per check: +8

                healthy = client.get("/v1/status/open")
                assert healthy["state"] == "healthy", healthy
                assert healthy["total_fails"] == 0
                assert healthy["total_checks"] >= 10  # checked all along, 0.1s apart
                assert daemon.terminate() == 0
            saved = daemon.status("dropped")
            assert saved is not None
            assert saved["state"] == "unhealthy"
            # The SYNs really were dropped by the rule (and retried by the kernel).
            counters = subprocess.run(
                [*inside, iptables, "-L", "INPUT", "-v", "-n", "-x"],
                check=True,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            line = next(x for x in counters.splitlines() if f"dpt:{dropped}" in x)
            assert int(line.split()[0]) >= 10, counters
        finally:
            kill_group(target.pid)
            target.wait(timeout=10)
            if target.stdout is not None:
                target.stdout.close()
