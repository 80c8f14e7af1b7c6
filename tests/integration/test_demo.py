"""``healthd demo``: the whole story with real services, and nothing left running after it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .harness import MARK_VAR, PY, pids_with


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_demo_tells_the_story_and_cleans_up(env: dict[str, str], mark: str) -> None:
    done = subprocess.run(
        [PY, "-m", "healthd", "demo", "--duration", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restart" in done.stdout
    assert "healthy again" in done.stdout
    # Only looking: processes started by this demo carry this test's marker in their
    # environment, so someone else's demo services are never counted (nor touched).
    ours = pids_with(f"{MARK_VAR}={mark}", in_environ=True)
    left = [f"{pid}: {cmdline(pid)}" for pid in ours if "healthd.demo_services" in cmdline(pid)]
    assert left == [], f"demo left services running: {left}"
    assert ours == [], f"demo left processes running: {[cmdline(p) for p in ours]}"
