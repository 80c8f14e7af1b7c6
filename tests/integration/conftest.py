"""Shared pieces of the integration tests: real processes and servers on loopback only.

Every process a test starts is stopped by PID or process group when the test ends. Child
processes get a per-test marker in their environment (``HEALTHD_ITEST_MARK``); at teardown any
process still carrying it (e.g. a service a daemon's restart command started) is killed by PID,
and nothing else is ever touched.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import MARK_VAR, DaemonProc, Services, alive, pids_with


@pytest.fixture
def require_binary(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """tests/conftest.py's ``require_binary`` (skips locally, fails under CI=true).

    Taken from the conftest pytest already loaded, so it works whether or not ``tests`` is a
    package.
    """
    shared = request.config.pluginmanager.get_plugin(str(Path(__file__).parents[1] / "conftest.py"))
    assert shared is not None, "tests/conftest.py is not loaded"
    found: Callable[[str], str] = shared.require_binary
    return found


@pytest.fixture(autouse=True)
def _no_unreaped_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After a test and its event loop are done, no child process may be left whose exit its
    owner never saw (what Python reports as ``ResourceWarning: subprocess N is still running``).

    Every Popen the test creates (asyncio's included) is kept referenced until here, so such a
    leak fails the test that caused it, not whichever later test happens to collect it.
    """
    created: list[subprocess.Popen[Any]] = []
    original = subprocess.Popen.__init__

    def tracking_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", tracking_init)
    yield
    for thread in threading.enumerate():
        if "waitpid-" in thread.name:  # asyncio's child watchers (asyncio-waitpid-N)
            thread.join(timeout=5)
    leaked = [p for p in created if p.returncode is None and not alive(p.pid)]
    for popen in leaked:
        popen.returncode = -1  # reported below, once
    created.clear()
    gc.collect()
    if leaked:
        pytest.fail(
            "child process(es) exited but their owner never saw it (transport closed before "
            f"the child was reaped): {[p.args for p in leaked]}"
        )


@pytest.fixture
def mark() -> Iterator[str]:
    """A marker for this test's child processes; whatever still carries it at the end is killed."""
    value = uuid.uuid4().hex
    yield value
    for pid in pids_with(f"{MARK_VAR}={value}", in_environ=True):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(mark: str) -> dict[str, str]:
    """The environment for child processes: ours without HEALTHD_* settings, plus the marker."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHD_")}
    out[MARK_VAR] = mark
    out["PYTHONUNBUFFERED"] = "1"
    return out


@pytest.fixture
def services(tmp_path: Path, env: dict[str, str]) -> Iterator[Services]:
    directory = tmp_path / "services"
    directory.mkdir()
    svc = Services(env, directory)
    try:
        yield svc
    finally:
        svc.stop_all()


@pytest.fixture
def daemon(tmp_path: Path, env: dict[str, str]) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path / "config", tmp_path / "status", env, tmp_path / "daemon.log")
    d.config_dir.mkdir()
    try:
        yield d
    finally:
        d.kill()
