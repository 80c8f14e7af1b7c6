"""The wall clock jumps an hour forward, then back, under the real daemon (libfaketime).

Only the wall clock is faked (``FAKETIME_DONT_FAKE_MONOTONIC=1``) and its offset is changed
while the daemon runs (``FAKETIME_TIMESTAMP_FILE`` re-read on every call). Schedules, deadlines
and restart delays must not notice; timestamps people read must follow the wall clock.

What the daemon did is measured on the kernel's boot-time clock, which libfaketime does not
touch: each check and each restart command appends ``/proc/uptime`` to a file.

In this mode libfaketime 0.9.10 makes ``time.sleep`` fail with EINVAL (Python 3.11 sleeps with
an absolute ``clock_nanosleep`` on the monotonic clock: wolfcw/libfaketime#426). The daemon
sleeps only through its event loop, so it is unaffected; a ``time.sleep`` added to it would
show here as a crash.
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from integration.harness import DaemonProc, connect, free_port, wait_for, write

from .soak_tools import SilentServer, WebhookReceiver

PHASE = 3.5  # seconds at each offset
INTERVAL = 0.2
RESTART_DELAY = 1.0
TIMEOUT = 0.5
HOUR = 3600
# Seconds a timestamp may trail the real time: saving lags on a loaded host; an hour does not.
SKEW = 30.0


def preload_of(faketime: str) -> str:
    """The LD_PRELOAD value the ``faketime`` wrapper uses on this system (no path hard-coded:
    it may hold ld.so's ``$LIB``, expanded by the loader)."""
    shown = subprocess.run(
        [faketime, "-f", "+0", "sh", "-c", 'printf %s "$LD_PRELOAD"'],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert "faketime" in shown, f"faketime set LD_PRELOAD={shown!r}"
    return shown


def under_faketime(daemon: DaemonProc, tmp_path: Path, faketime: str) -> Path:
    """Run the daemon with only its wall clock faked, at offset 0 for now; returns the file
    that moves it (``set_offset``)."""
    offset_file = tmp_path / "faketime-offset"
    set_offset(offset_file, 0)
    daemon.env.update(
        LD_PRELOAD=preload_of(faketime),
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    return offset_file


def set_offset(path: Path, seconds: int) -> None:
    """Move the faked wall clock; atomic, so the daemon never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds:+d}\n")
    os.replace(tmp, path)


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def stamps(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


def within(values: list[float], start: float, end: float) -> list[float]:
    return [v for v in values if start <= v < end]


def gaps(values: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in itertools.pairwise(values)]


def test_wall_clock_jumps_leave_schedules_deadlines_and_restart_delays_alone(
    daemon: DaemonProc, tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    offset_file = under_faketime(daemon, tmp_path, require_binary("faketime"))
    beats, restarts = tmp_path / "beats", tmp_path / "restarts"
    write(daemon, "beat", "exec", target=f"cat /proc/uptime >> {beats}", interval=INTERVAL)
    write(
        daemon, "slow", "exec", target="sleep 5", timeout=TIMEOUT, interval=INTERVAL, retries=10**6
    )
    silent = SilentServer()  # HTTP checks against it time out: the probes' own deadline
    write(daemon, "mute", "http", host="127.0.0.1", port=silent.start(), timeout=TIMEOUT,
          interval=INTERVAL, retries=10**6)  # fmt: skip
    write(
        daemon,
        "flap",
        "exec",
        target="exit 1",
        interval=0.1,
        retries=1,
        auto_restart=True,
        restart_delay=RESTART_DELAY,
        restart_command=("sh", "-c", f"cat /proc/uptime >> {restarts}"),
    )
    daemon.start()
    api = connect(daemon)
    wait_for("the first restart", lambda: stamps(restarts), detail=daemon.log)

    def wall_offset_seen() -> float:
        """How far statuses.json's latest timestamp is from the real wall clock."""
        status = daemon.status("flap") or {}
        last = datetime.fromisoformat(str(status.get("last_check", "0001-01-01T00:00:00Z")))
        return (last - datetime.now(UTC)).total_seconds()

    jumps: list[tuple[float, int]] = []
    uptimes: list[float] = []
    for offset in (0, HOUR, 0):  # forward an hour, then back an hour
        set_offset(offset_file, offset)
        jumps.append((uptime(), offset))
        time.sleep(PHASE)
        # the status page's uptime is the daemon's own: it grows by the time that passed,
        # not by the hour the wall clock jumped, and the jump back does not take it to 0
        uptimes.append(float(api.get("/v1/status")["daemon"]["uptime_seconds"]))
        assert len(uptimes) == 1 or 0.8 * PHASE < uptimes[-1] - uptimes[-2] < 3 * PHASE, uptimes
        # flap changes state every check: statuses.json is rewritten many times a second.
        seen = wall_offset_seen()
        assert abs(seen - offset) < SKEW, (
            f"at a wall-clock offset of {offset}s, statuses.json's last_check is {seen:.1f}s "
            f"from the real time"
        )
        live = api.get("/v1/status/beat")["last_check"]
        drift = (datetime.fromisoformat(live) - datetime.now(UTC)).total_seconds()
        assert abs(drift - offset) < SKEW, f"offset {offset}: API last_check {live}"
    end = uptime()
    history = api.get("/v1/workloads/slow/history")["results"]
    history += api.get("/v1/workloads/mute/history")["results"]
    assert daemon.terminate() == 0, daemon.log()
    silent.stop()

    beat, restart = stamps(beats), stamps(restarts)
    where = f"jumps at {jumps}\nbeats {gaps(beat)}\nrestarts {restart}\nlog:\n{daemon.log()}"
    bounds = [*(at for at, _ in jumps), end]
    counts = []
    for (start, offset), stop in zip(jumps, bounds[1:], strict=False):
        # a 3 s window from a moment after each jump: the same number of checks in each
        window = within(beat, start + 0.25, start + 3.25)
        counts.append(len(window))
        assert len(within(restart, start, stop)) >= 2, f"offset {offset}: restarts stopped\n{where}"
    # A busy host only makes checks late, never early: the lower bounds are loose, the upper
    # ones are not. A schedule on the wall clock would stall for an hour (0 checks) after the
    # jump back and fire at once (a burst) after the jump forward.
    expected = 3.0 / INTERVAL
    for count in counts:
        assert 0.2 * expected <= count <= expected + 1, f"checks per 3 s: {counts}\n{where}"
    observed = within(beat, jumps[0][0], end)
    assert min(gaps(observed)) >= INTERVAL - 0.06, f"checks bunched up\n{where}"
    assert max(gaps(observed)) <= 2.0, f"checks stalled\n{where}"
    # restart_delay is measured from the end of the last attempt; a restart starts on the
    # first failing check after it (every 0.1 s), and the command takes some milliseconds.
    paced = gaps(within(restart, jumps[0][0], end))
    assert all(RESTART_DELAY - 0.02 <= g <= RESTART_DELAY + 1.5 for g in paced), where
    # every timed-out check took its timeout, not an hour and not nothing
    durations = [r["duration_seconds"] for r in history]
    assert len(durations) >= 20, history
    assert all(not r["ok"] for r in history), history
    # On the wall clock a deadline would expire at once after the jump forward, or an hour
    # late after the jump back (the sleep ends first, at 5 s: hence the upper bound). A loaded
    # CI host once stalled the whole process for 1.1 s, making two timeouts that overlapped
    # the stall read 1.64 s; precision is judged on the median, not on the worst case.
    assert all(TIMEOUT <= d < TIMEOUT + 2.5 for d in durations), f"timed out in {durations}"
    assert statistics.median(durations) < TIMEOUT + 0.1, f"timed out in {durations}"
    print(
        f"\nclock: checks per 3 s at offsets 0, +1h, 0: {counts}; restarts apart: {paced}; "
        f"timeouts took {min(durations)}..{max(durations)} s "
        f"(median {statistics.median(durations)})"
    )


def test_a_webhook_retry_is_not_put_off_by_the_wall_clock_jumping_back(
    daemon: DaemonProc, tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    """The first delivery is answered 503; the wall clock then goes back an hour. The retry
    (1 s at most after the failure) must still come within seconds, not in an hour."""
    offset_file = under_faketime(daemon, tmp_path, require_binary("faketime"))
    receiver = WebhookReceiver(refuse_first=1)
    hook = receiver.start()
    daemon.daemon_config.write_text(f"sinks:\n  - name: hook\n    type: webhook\n    url: {hook}\n")
    try:
        daemon.start()
        wait_for("the first delivery (refused)", lambda: receiver.arrivals, detail=daemon.log)
        set_offset(offset_file, -HOUR)
        # The dispatcher reads its outbox again on every commit: make one after the jump.
        write(daemon, "late", "exec", target="true")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_for(
            "the retry after the jump back",
            lambda: len(receiver.arrivals) >= 2,
            timeout=15,
            detail=lambda: f"arrivals {receiver.arrivals}\n{daemon.log()}",
        )
    finally:
        receiver.stop()
    waited = receiver.arrivals[1] - receiver.arrivals[0]
    # The retry is due 1 s at most after the failure; a loaded host (and a reload running
    # meanwhile) has made it 3.3 s. The wall clock's way would be an hour.
    assert 0.4 <= waited <= 10, f"retried {waited:.2f}s after the refused delivery"
    assert [t for t, _ in receiver.seen.values()][:1] == ["daemon_started"], receiver.seen


def test_reminders_keep_their_pace_across_wall_clock_jumps(
    daemon: DaemonProc, tmp_path: Path, require_binary: Callable[[str], str]
) -> None:
    """repeat_interval 1 s while a workload stays unhealthy: one reminder a second, whether
    the wall clock jumps back an hour (not none for an hour) or forward (not a burst)."""
    offset_file = under_faketime(daemon, tmp_path, require_binary("faketime"))
    receiver = WebhookReceiver()
    hook = receiver.start()
    daemon.daemon_config.write_text(
        f"sinks:\n  - name: hook\n    type: webhook\n    url: {hook}\n"
        "    events: [unhealthy]\n    repeat_interval: 1s\n"
    )
    write(daemon, "down", "tcp", host="127.0.0.1", port=free_port(), retries=1, interval=0.5)
    jumps = []
    try:
        daemon.start()
        for offset in (-HOUR, HOUR):
            wait_for("a reminder", lambda: receiver.reminders, detail=daemon.log)
            set_offset(offset_file, offset)
            jumps.append(time.monotonic())
            time.sleep(PHASE)
    finally:
        receiver.stop()
    paced = gaps(receiver.reminders)
    where = f"reminders {receiver.reminders} (gaps {paced}), jumps at {jumps}\n{daemon.log()}"
    for at in jumps:
        # one a second: 3 in the 3.5 s, give or take the one that was late
        assert 2 <= len(within(receiver.reminders, at, at + PHASE)) <= 4, where
