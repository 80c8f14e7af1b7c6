"""Hostile and broken config dirs: the real daemon keeps monitoring the valid workloads and
reports every bad file as ``FILE: reason`` in its log, as a config_error event and in
/v1/workloads' ``config_errors``. It never crashes over a file."""

from __future__ import annotations

import os
import shutil
import signal
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from healthd.config.loader import MAX_FILE_BYTES, config_files, load_file
from healthd.errors import Problem
from integration.harness import (
    ApiClient,
    DaemonProc,
    Services,
    connect,
    kill_group,
    wait_for,
    write,
)

DATA = Path(__file__).parents[1] / "data"


def problems_logged(daemon: DaemonProc, since: int = 0) -> list[str]:
    """The ``problem=`` of each config_error log line, unquoted and unescaped."""
    out = []
    for line in daemon.events("config_error", since):
        value = line.split(" problem=", 1)[1]
        if value.startswith('"'):
            value = value[1:-1].encode().decode("unicode_escape")
        out.append(value)
    return out


def config_errors(client: ApiClient) -> list[str]:
    return [p["message"] for p in client.get("/v1/workloads")["config_errors"]]


def config_error_events(client: ApiClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get("/v1/events?type=config_error&limit=1000")["events"]
    return found


def keeps_checking(client: ApiClient, name: str, more: int = 3) -> dict[str, Any]:
    """The workload is checked ``more`` more times from now on (the daemon monitors on)."""
    first: int = client.get(f"/v1/status/{name}")["total_checks"]
    return client.wait_status(name, lambda s: s["total_checks"] >= first + more)


def reload(daemon: DaemonProc) -> str:
    """SIGHUP (the API's reload needs a token); the config_reloaded line."""
    since = len(daemon.log())
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    return daemon.wait_event("config_reloaded", since)[0]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_bad_files_are_reported_one_by_one_and_the_good_one_is_monitored(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", port=svc.port, host="127.0.0.1")
    cfg = daemon.config_dir
    (cfg / "garbage.yaml").write_bytes(bytes(range(256)) * 64)  # binary, not UTF-8 at byte 128
    with open(cfg / "huge.yaml", "wb") as fh:  # 10 MB of one valid-looking scalar
        fh.write(b"workload: huge\ncomment: " + b"x" * (10 << 20) + b"\n")
    shutil.copy(DATA / "invalid-alias-bomb.yaml", cfg / "bomb.yaml")
    (cfg / "loop.yaml").symlink_to("loop.yaml")  # resolves to itself: ELOOP
    # A name listed whose file is gone when it is read: what a file deleted between the
    # listing and the open looks like to the loader (the same open() failing with ENOENT).
    (cfg / "gone.yaml").symlink_to("deleted-meanwhile.yaml")
    (cfg / os.fsdecode(b"bad-\xff.yaml")).write_text("workload: x\ntype: tcp\n")
    expected = sorted(
        [
            f"{cfg}/bad-\\xff.yaml: file name is not UTF-8: rename the file",
            f"{cfg}/bomb.yaml:5: port: expected a single value, got a list",
            f"{cfg}/garbage.yaml: not UTF-8 text (byte 128)",
            f"{cfg}/gone.yaml: cannot read: No such file or directory",
            f"{cfg}/huge.yaml: file larger than {MAX_FILE_BYTES} bytes",
            f"{cfg}/loop.yaml: cannot read: Too many levels of symbolic links",
        ]
    )

    started = time.monotonic()
    daemon.start()
    client = connect(daemon)
    ready = time.monotonic() - started
    client.wait_status("web", lambda s: s["state"] == "healthy")
    keeps_checking(client, "web")

    assert sorted(problems_logged(daemon)) == expected, daemon.log()
    assert sorted(config_errors(client)) == expected
    # Every event is committed, the one about the file with the non-UTF-8 name too: before
    # the fix it failed the journal's commit, and every event after it waited for ever.

    def six() -> list[dict[str, Any]] | None:
        found = config_error_events(client)
        return found if len(found) == 6 else None

    events = wait_for("six config_error events", six, detail=daemon.log)
    assert sorted(e["message"] for e in events) == expected
    files = {m.split(": ")[0].removesuffix(":5") for m in expected}
    assert {e["details"]["file"] for e in events} == files
    wait_for(  # the events after them commit too
        "daemon_started", lambda: client.get("/v1/events?type=daemon_started")["events"]
    )
    assert "event_journal_commit_failed" not in daemon.log()
    assert [w["workload"] for w in client.get("/v1/workloads")["workloads"]] == ["web"]
    # Neither the 10 MB file nor the aliases were taken in whole: the daemon's peak memory is
    # what an idle daemon needs, and it answered within seconds.
    assert peak_rss_kib(daemon.pid) < 80 * 1024, peak_rss_kib(daemon.pid)  # idle: ~31 MB
    assert ready < 10, ready
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log()


def test_alias_bomb_is_refused_fast_in_bounded_memory() -> None:
    """PyYAML's compose shares an aliased node instead of copying it: the 9**9 "lol"s of the
    billion laughs are never built. Measured on the loader itself, in this process."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        cfg, problems = load_file(DATA / "invalid-alias-bomb.yaml")
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cfg is None
    assert [str(p) for p in problems] == [
        f"{DATA}/invalid-alias-bomb.yaml:5: port: expected a single value, got a list"
    ]
    assert took < 0.5, took
    # The loader's one read buffer (1 MB) is most of it; expanded, the aliases would be
    # gigabytes (even their fifth level alone: 9**5 lists).
    assert peak < 4 << 20, peak


def test_a_file_unlinked_after_the_listing_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """The race itself, made deterministic: the dir is listed, one listed file is removed,
    then the files are read."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(f"workload: {name}\ntype: tcp\nport: 1\n")
    listed = config_files(tmp_path)
    (tmp_path / "a.yaml").unlink()
    results = [load_file(path) for path in listed]
    gone = Problem(str(tmp_path / "a.yaml"), 0, "", "cannot read: No such file or directory")
    assert results[0] == (None, [gone])
    kept = results[1][0]
    assert kept is not None
    assert kept.workload == "b"


def test_missing_config_dir_is_reported_and_a_reload_picks_it_up(
    daemon: DaemonProc, services: Services
) -> None:
    daemon.config_dir.rmdir()
    daemon.start("--no-watch")  # the SIGHUP reloads; watching it: test_reload_watch.py
    client = connect(daemon)
    message = f"{daemon.config_dir}: config directory does not exist"
    assert problems_logged(daemon) == [message]
    assert config_errors(client) == [message]
    assert client.get("/v1/workloads")["workloads"] == []

    daemon.config_dir.mkdir()
    svc = services.start("http")
    write(daemon, "web", "http", port=svc.port, host="127.0.0.1")
    reload(daemon)
    assert [w["workload"] for w in client.get("/v1/workloads")["workloads"]] == ["web"]
    client.wait_status("web", lambda s: s["state"] == "healthy")
    assert config_errors(client) == []
    assert daemon.terminate() == 0


def test_config_dir_that_is_a_file_is_reported(daemon: DaemonProc) -> None:
    daemon.config_dir.rmdir()
    daemon.config_dir.write_text("workload: x\n")
    daemon.start()
    client = connect(daemon)
    message = f"{daemon.config_dir}: cannot list: Not a directory"
    # the API may answer before the journal's first batch is committed
    events = wait_for(
        "the config_error event", lambda: config_error_events(client), detail=daemon.log
    )
    assert [(e["workload"], e["message"]) for e in events] == [("", message)]
    assert problems_logged(daemon) == [message]
    assert config_errors(client) == [message]
    assert daemon.terminate() == 0


# The capabilities that let root read and list whatever the permission bits say
_DAC_CAPS = ("dac_override", "dac_read_search")
_DAC_BITS = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def without_dac_override(setpriv: str) -> Callable[[list[str]], list[str]]:
    """Run as root without the two capabilities that make root ignore permission bits, as a
    daemon under systemd's CapabilityBoundingSet would. Root stays root (its interpreter may
    live in root's 0700 home), but a directory or file of mode 000 is closed to it."""
    drop = ",".join(f"-{cap}" for cap in _DAC_CAPS)

    def wrap(argv: list[str]) -> list[str]:
        return [setpriv, f"--bounding-set={drop}", *argv]

    return wrap


def test_unreadable_config_dir_and_file(
    tmp_path: Path,
    env: dict[str, str],
    services: Services,
    require_binary: Callable[[str], str],
) -> None:
    """chmod 000 does not stop root with CAP_DAC_OVERRIDE, so the daemon runs without it
    (through setpriv) and meets a config dir, and then a file, it is really denied."""
    setpriv = require_binary("setpriv")
    if os.geteuid() != 0:
        pytest.fail("this test drops root's capabilities: run it as root")
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    daemon = DaemonProc(config_dir, status_dir, env, tmp_path / "daemon.log")
    daemon.wrap = without_dac_override(setpriv)
    svc = services.start("http")
    write(daemon, "web", "http", port=svc.port, host="127.0.0.1")
    (config_dir / "secret.yaml").write_text("workload: secret\ntype: tcp\nport: 1\n")
    (config_dir / "secret.yaml").chmod(0o000)
    config_dir.chmod(0o000)
    try:
        daemon.start("--no-watch")  # one reload, the SIGHUP's: its config_error lines counted
        client = connect(daemon)
        message = f"{config_dir}: cannot list: Permission denied"
        assert problems_logged(daemon) == [message]
        assert config_errors(client) == [message]
        caps = Path(f"/proc/{daemon.pid}/status").read_text().split("CapEff:\t")[1]
        assert int(caps.split()[0], 16) & _DAC_BITS == 0, "the daemon may still override"

        config_dir.chmod(0o755)  # the dir opens up; one file in it stays closed
        since = len(daemon.log())
        line = reload(daemon)
        assert "added=1" in line.split()
        assert "config_errors=1" in line.split()
        denied = f"{config_dir}/secret.yaml: cannot read: Permission denied"
        assert problems_logged(daemon, since) == [denied]
        assert config_errors(client) == [denied]
        client.wait_status("web", lambda s: s["state"] == "healthy")
        keeps_checking(client, "web")
        assert daemon.terminate() == 0
    finally:
        config_dir.chmod(0o755)
        if daemon.proc is not None:
            kill_group(daemon.proc.pid)
            daemon.proc.wait(timeout=10)
