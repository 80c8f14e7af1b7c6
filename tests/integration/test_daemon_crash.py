"""kill -9 of the real daemon at random moments: statuses.json stays whole and counters hold."""

from __future__ import annotations

import json
import random
import time

from healthd.config import editor
from healthd.config.workload import WorkloadConfig

from .harness import DaemonProc, wait_for

ROUNDS = 10


def test_sigkill_at_random_moments_never_corrupts_statuses(daemon: DaemonProc) -> None:
    for i in range(20):
        failing = i % 2 == 1
        cfg = WorkloadConfig(
            workload=f"w{i:02d}",
            type="exec",
            target="exit 1" if failing else "true",
            interval=0.2,
            timeout=1.0,
            retries=1,
            auto_restart=failing,
            restart_delay=0.2,
            restart_command=("true",) if failing else None,
        )
        editor.write(daemon.config_dir, cfg)
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    path = daemon.status_dir / "statuses.json"
    restarts: dict[str, int] = {}
    checks: dict[str, int] = {}
    for round_ in range(ROUNDS):
        since = len(daemon.log())
        daemon.start()
        # The first rounds die before or while the daemon starts; the later ones after it has
        # saved at least once (waited for, not guessed: a loaded host starts it slowly).
        if round_ < ROUNDS // 2:
            pause = rng.uniform(0.2, 1.5)
        else:
            wait_for("statuses.json", path.exists, timeout=30, detail=daemon.log)
            pause = rng.uniform(0.0, 0.7)
        time.sleep(pause)
        daemon.kill()
        where = f"round {round_} (seed {seed}, killed {pause:.2f}s after start or first save)"
        if not path.exists():
            assert round_ < ROUNDS // 2, f"{where}: no statuses.json yet"
            continue
        data = json.loads(path.read_bytes())  # never torn: always the old or the new file
        assert isinstance(data, list), where
        for entry in data:
            name = entry["workload"]
            assert entry["restart_count"] >= restarts.get(name, 0), f"{where}: {name} went back"
            assert entry["total_checks"] >= checks.get(name, 0), f"{where}: {name} went back"
            restarts[name] = entry["restart_count"]
            checks[name] = entry["total_checks"]
        assert "Traceback" not in daemon.log()[since:], daemon.log()[since:]
    assert len(restarts) == 20
    assert sum(restarts.values()) > 0, "no restart was ever recorded"
    assert sum(checks.values()) > 0
    leftovers = [p.name for p in daemon.status_dir.iterdir() if p.name != "statuses.json"]
    assert not [n for n in leftovers if n.startswith("statuses.json.corrupt")], leftovers
