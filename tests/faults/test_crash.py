"""200 kill -9 of the real daemon at random moments of a busy run.

After every kill: statuses.json parses and has the reference's shape, events.db passes
SQLite's integrity check, counters never go backwards, and no event anyone was told about
(delivered to the webhook receiver, or returned by GET /v1/events) is missing or changed.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import time

from integration.harness import ApiClient, DaemonProc, connect, free_port, write

from .soak_tools import WebhookReceiver, check_reference_shape, journal_events

ROUNDS = 200
# Fixed, so that a failure's kill moments can be replayed (CRASH_SEED=N picks others); every
# failure message names it.
SEED = int(os.environ.get("CRASH_SEED", "6"))
# Seconds from start to kill: before the API is up (~0.3 s), while it starts, and while it
# delivers (the first delivery goes ~1 s after start: imports and the TLS context).
LONGEST = 1.5


def busy_config(daemon: DaemonProc, hook: str) -> None:
    """Workloads that make events all the time (restarts, failed restarts, flapping), and a
    webhook sink that receives them."""
    daemon.daemon_config.write_text(
        f"sinks:\n  - name: hook\n    type: webhook\n    url: {hook}\n    timeout: 2s\n"
    )
    fast = {"interval": 0.1, "retries": 1, "restart_delay": 0.2}
    for i in range(6):
        port = free_port()  # nothing listens: refused at once
        write(
            daemon,
            f"down{i}",
            "tcp",
            host="127.0.0.1",
            port=port,
            auto_restart=True,
            **fast,
            restart_command=("true",),
        )
    for i in range(3):  # restart_failed events
        write(
            daemon,
            f"stuck{i}",
            "exec",
            target="exit 1",
            auto_restart=True,
            **fast,
            restart_command=("false",),
        )
    for i in range(6):  # the parity of the shell's pid: healthy, unhealthy, healthy, ...
        write(daemon, f"flap{i}", "exec", target="[ $(($$ % 2)) = 0 ]", **fast)
    for i in range(5):
        write(daemon, f"ok{i}", "exec", target="true", **fast)


def api_events(daemon: DaemonProc, after: int) -> list[dict[str, object]]:
    """GET /v1/events after ``after``, if this run's API answers now ([] otherwise)."""
    listen = (daemon.api_endpoints() or {}).get("listen")
    if not listen:
        return []
    try:
        reply = ApiClient(f"http://{listen}", timeout=0.3).call(
            "GET", f"/v1/events?after_id={after}&limit=1000"
        )
    except OSError:
        return []
    if reply.status != 200:
        return []
    found: list[dict[str, object]] = reply.body["events"]
    return found


def _temp_files(daemon: DaemonProc) -> list[str]:
    return [p.name for p in daemon.status_dir.iterdir() if p.name.endswith(".tmp")]


def test_200_sigkills_lose_no_acknowledged_event_and_corrupt_nothing(daemon: DaemonProc) -> None:
    receiver = WebhookReceiver()
    busy_config(daemon, receiver.start())
    seed = SEED
    rng = random.Random(seed)
    statuses_path = daemon.status_dir / "statuses.json"
    journal_path = daemon.status_dir / "events.db"
    restarts: dict[str, int] = {}
    checks: dict[str, int] = {}
    acked: dict[int, tuple[str, str]] = {}  # returned by the API: id -> (type, workload)
    last_max_id = 0
    temps = 0  # the most temp files seen beside the status files after a kill
    began = time.monotonic()
    try:
        for round_ in range(ROUNDS):
            since = len(daemon.log())
            daemon.start()
            pause = rng.uniform(0.0, LONGEST)
            deadline = time.monotonic() + pause
            while deadline > time.monotonic():
                after = max(acked, default=0)
                for event in api_events(daemon, after):
                    acked[int(str(event["id"]))] = (str(event["type"]), str(event["workload"]))
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            daemon.kill()
            where = f"round {round_} (seed {seed}, killed {pause:.3f}s after start)"

            log = daemon.log()[since:]
            assert "Traceback" not in log, f"{where}:\n{log}"
            assert "unusable" not in log, f"{where}:\n{log}"
            if statuses_path.exists():
                data = check_reference_shape(json.loads(statuses_path.read_bytes()))
                for entry in data:
                    name = entry["workload"]
                    assert entry["restart_count"] >= restarts.get(name, 0), f"{where}: {entry}"
                    assert entry["total_checks"] >= checks.get(name, 0), f"{where}: {entry}"
                    restarts[name] = entry["restart_count"]
                    checks[name] = entry["total_checks"]
            if not journal_path.exists():
                count = len(acked) + len(receiver.seen)
                assert count == 0, f"{where}: events.db is gone, {count} events were acknowledged"
                continue
            kept = journal_events(journal_path)
            ids = list(kept)
            assert not ids or ids[-1] >= last_max_id, f"{where}: the newest event id went back"
            last_max_id = ids[-1] if ids else 0
            times = [kept[i][2] for i in ids]
            late = [(a, b) for a, b in itertools.pairwise(ids) if kept[b][2] < kept[a][2] - 1]
            assert not late, f"{where}: ids out of time order {late[:5]} ({times[:3]}...)"
            told = {**acked, **receiver.snapshot()}
            lost = {i: e for i, e in told.items() if i not in kept or kept[i][:2] != e}
            assert not lost, f"{where}: acknowledged events lost or changed: {lost}"
            assert not receiver.conflicts, f"{where}: {receiver.conflicts}"
            temps = max(temps, len(_temp_files(daemon)))
        took = time.monotonic() - began
        # A clean start after all that: the temp files kills left mid-save are removed (each
        # kill could leave one, for good), and the daemon stops cleanly.
        daemon.start()
        connect(daemon)
        assert daemon.terminate() == 0, daemon.log()[-3000:]
        assert _temp_files(daemon) == [], daemon.log()[-3000:]
    finally:
        receiver.stop()
    # The test proves something only if the runs were busy and events were acknowledged.
    assert sum(restarts.values()) > 50, restarts
    assert len(receiver.seen) > 100, f"only {len(receiver.seen)} events delivered (seed {seed})"
    assert len(acked) > 100, f"only {len(acked)} events seen through the API (seed {seed})"
    assert not [p for p in daemon.status_dir.iterdir() if ".corrupt" in p.name]
    print(
        f"\ncrash: {ROUNDS} kill -9 in {took:.0f}s (seed {seed}); {len(receiver.seen)} events "
        f"delivered ({receiver.posts} posts), {len(acked)} via the API, {last_max_id} journaled, "
        f"{sum(restarts.values())} restarts, {sum(checks.values())} checks saved; up to {temps} "
        "temp files left by kills mid-save"
    )


def test_start_removes_temp_files_a_killed_daemon_left_and_no_others(daemon: DaemonProc) -> None:
    """A kill -9 mid-save leaves ``.statuses.json.PID.N.tmp``; the next start removes those
    of dead processes, names them in the log, and leaves a live process's write alone."""
    dead_pid = _exited_pid()
    daemon.status_dir.mkdir()
    stale = [
        daemon.status_dir / f".statuses.json.{dead_pid}.3.tmp",
        daemon.status_dir / f".daemon.json.{dead_pid}.4.tmp",
    ]
    in_progress = daemon.status_dir / f".statuses.json.{os.getpid()}.1.tmp"
    unrelated = daemon.status_dir / ".statuses.json.notapid.1.tmp"
    for path in (*stale, in_progress, unrelated):
        path.write_text("[")
    daemon.start()
    connect(daemon)
    daemon.wait_event("stale_temp_files_removed")
    assert daemon.terminate() == 0
    lines = daemon.events("stale_temp_files_removed")
    assert sorted(p.name for p in stale if not p.exists()) == sorted(p.name for p in stale)
    assert in_progress.exists(), "the temp file of a running process was removed"
    assert unrelated.exists()
    assert len(lines) == 2, lines
    assert f"files={stale[0].name}" in lines[0].split(), lines
    assert f"files={stale[1].name}" in lines[1].split(), lines


def _exited_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
