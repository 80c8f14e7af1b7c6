"""Config dir watching against the real daemon: files added, removed, changed and broken in the
config dir are picked up by themselves, without SIGHUP or POST /-/reload; ``healthd add`` and
``rm`` through the real CLI; a directory removed and made again, a symlinked dir swapped and a
Kubernetes-style ``..data`` swap; ``--no-watch`` leaves it all to SIGHUP.

Every reload here must come from the watcher: each test asserts that its config_reloaded
lines say ``trigger=watch``, and that no SIGHUP was logged.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import ApiClient, DaemonProc, Services, connect, run_cli, wait_for, write

SETTLE = 1.5  # six quiet periods of the default debounce (250 ms): a late reload would show


# -- helpers ---------------------------------------------------------------------------------


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` as a careful tool does: a hidden temp file renamed over it."""
    temp = path.with_name(f".{path.name}.test.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def reloads(daemon: DaemonProc, since: int = 0) -> list[dict[str, str]]:
    """The config_reloaded log lines as key -> value (values have no spaces here)."""
    out = []
    for line in daemon.events("config_reloaded", since):
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        out.append(fields)
    return out


def wait_reload(daemon: DaemonProc, since: int, **expected: str) -> dict[str, str]:
    """The first reload from ``since`` on whose fields include ``expected``; it must be the
    watcher's."""

    def found() -> dict[str, str] | None:
        for fields in reloads(daemon, since):
            if all(fields.get(k) == v for k, v in expected.items()):
                return fields
        return None

    fields = wait_for(f"a reload with {expected}", found, detail=daemon.log)
    assert fields["trigger"] == "watch", fields
    return fields


def no_sighup(daemon: DaemonProc) -> None:
    assert not [line for line in daemon.events("signal") if "signal=SIGHUP" in line]


def names(client: ApiClient) -> list[str]:
    return sorted(w["workload"] for w in client.get("/v1/status")["workloads"])


def config_error_events(client: ApiClient) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get("/v1/events?type=config_error&limit=1000")["events"]
    return found


def counter(path: Path) -> int:
    """Lines a check appended to ``path`` (one per run)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def appending(path: Path) -> tuple[str, ...]:
    """An exec check's argv that appends a line to ``path`` each time it runs."""
    return ("sh", "-c", f"echo run >> {path}")


def tcp_file(name: str, port: int, interval: str = "200ms", **extra: str) -> str:
    """A tcp workload's file as a person writes it (no defaults filled in)."""
    lines = [f"workload: {name}", "type: tcp", "host: 127.0.0.1", f"port: {port}"]
    lines += [f"interval: {interval}", "timeout: 500ms", *(f"{k}: {v}" for k, v in extra.items())]
    return "\n".join(lines) + "\n"


# -- added, removed, changed, broken ---------------------------------------------------------


def test_an_added_file_is_monitored_without_a_signal(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc.port)
    daemon.start()
    client = connect(daemon)
    assert daemon.events("config_watch"), "the watcher did not start"
    since = len(daemon.log())

    write(daemon, "late", "tcp", host="127.0.0.1", port=svc.port)
    fields = wait_reload(daemon, since, files="late.yaml")
    assert (fields["added"], fields["changed"], fields["removed"]) == ("1", "0", "0")
    client.wait_status("late", lambda s: s["state"] == "healthy" and s["total_checks"] >= 2)
    assert names(client) == ["a", "late"]
    no_sighup(daemon)


def test_a_removed_file_stops_its_checks(daemon: DaemonProc, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(daemon, "keep", "exec", target="true")
    path = write(daemon, "gone", "exec", command=appending(runs))
    daemon.start()
    client = connect(daemon)
    wait_for("the check to run", lambda: counter(runs) >= 3, detail=daemon.log)
    since = len(daemon.log())

    path.unlink()
    fields = wait_reload(daemon, since, files="gone.yaml")
    assert (fields["removed"], fields["unchanged"]) == ("1", "1")
    assert client.call("GET", "/v1/status/gone").status == 404
    assert names(client) == ["keep"]
    stopped = counter(runs)
    time.sleep(SETTLE)  # seven intervals: a check still scheduled would have run
    assert counter(runs) == stopped, "the removed workload is still checked"
    no_sighup(daemon)


def test_a_changed_file_keeps_the_counters_of_its_workload(daemon: DaemonProc) -> None:
    path = write(daemon, "job", "exec", target="false", retries=1000)
    daemon.start()
    client = connect(daemon)
    before = client.wait_status("job", lambda s: s["total_fails"] >= 4)
    since = len(daemon.log())

    write(daemon, "job", "exec", target="true", retries=1000, interval=0.3)
    seen = [before["total_checks"]]

    def changed() -> dict[str, str] | None:
        seen.append(client.get("/v1/status/job")["total_checks"])
        return next(iter(reloads(daemon, since)), None)

    fields = wait_for("the change to be reloaded", changed, detail=daemon.log)
    assert (fields["trigger"], fields["files"], fields["changed"]) == ("watch", path.name, "1")
    after = client.wait_status("job", lambda s: s["healthy"])
    seen.append(after["total_checks"])
    assert seen == sorted(seen), f"total_checks went back across the reload: {seen}"
    assert after["total_checks"] > before["total_checks"]
    # the failures counted under the old config are still there; the new one succeeds
    assert after["total_fails"] >= before["total_fails"]
    assert after["total_fails"] < after["total_checks"]
    config = client.get("/v1/workloads")["workloads"][0]
    assert (config["target"], config["interval_seconds"]) == ("true", 0.3)
    no_sighup(daemon)


def test_an_invalid_change_keeps_the_old_config_and_emits_config_error(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    path = daemon.config_dir / "db.yaml"
    replace_text(path, tcp_file("db", svc.port))
    daemon.start()
    client = connect(daemon)
    client.wait_status("db", lambda s: s["state"] == "healthy")
    since = len(daemon.log())

    replace_text(path, tcp_file("db", svc.port, colour="red"))
    fields = wait_reload(daemon, since, files="db.yaml")
    assert (fields["kept"], fields["config_errors"], fields["changed"]) == ("1", "1", "0")

    def error_event() -> list[dict[str, Any]] | None:
        found = [e for e in config_error_events(client) if e["workload"] == "db"]
        return found or None

    events = wait_for("the config_error event", error_event, detail=daemon.log)
    assert events[0]["details"]["file"] == str(path)
    assert events[0]["details"]["line"] == 7
    assert "colour: unknown key" in events[0]["message"]
    # the old config runs on: still checked, still healthy, still monitored
    checks = client.get("/v1/status/db")["total_checks"]
    status = client.wait_status("db", lambda s: s["total_checks"] >= checks + 3)
    assert (status["state"], status["monitored"]) == ("healthy", True)
    assert [e["file"] for e in client.get("/v1/workloads")["config_errors"]] == [str(path)]

    # An unrelated edit reloads too: the problem is logged again, but not published again
    # (a broken file must not page someone at every edit of another one).
    since = len(daemon.log())
    replace_text(daemon.config_dir / "other.yaml", tcp_file("other", svc.port))
    fields = wait_reload(daemon, since, files="other.yaml")
    assert (fields["added"], fields["config_errors"]) == ("1", "1")
    wait_for("other's first check", lambda: client.get("/v1/status/other")["total_checks"])
    assert len(error_event() or []) == 1, config_error_events(client)

    since = len(daemon.log())
    replace_text(path, tcp_file("db", svc.port, interval="300ms"))  # fixed, and changed
    fields = wait_reload(daemon, since, files="db.yaml")
    assert (fields["changed"], fields["config_errors"]) == ("1", "0")
    assert client.get("/v1/workloads")["config_errors"] == []

    # broken again after being fixed: a new episode, announced again
    since = len(daemon.log())
    replace_text(path, tcp_file("db", svc.port, colour="red"))
    wait_reload(daemon, since, files="db.yaml", config_errors="1")
    wait_for("the second config_error event", lambda: len(error_event() or []) == 2)
    no_sighup(daemon)


def test_a_burst_of_changes_is_one_reload_or_two_at_most(daemon: DaemonProc) -> None:
    """Twenty files in a few milliseconds: grouped, not one reload per file."""
    daemon.start()
    client = connect(daemon)
    since = len(daemon.log())
    for n in range(20):
        text = f"workload: w{n}\ntype: exec\ntarget: 'true'\ninterval: 1h\n"
        replace_text(daemon.config_dir / f"w{n}.yaml", text)
    wait_for("all twenty", lambda: len(names(client)) == 20, detail=daemon.log)
    time.sleep(SETTLE)
    seen = reloads(daemon, since)
    assert 1 <= len(seen) <= 2, seen
    files = {name for fields in seen for name in fields["files"].split(",")}
    assert files == {f"w{n}.yaml" for n in range(20)}
    assert all(fields["trigger"] == "watch" for fields in seen)
    assert not daemon.events("config_error"), "a half-written file was read"


# -- the real CLI ---------------------------------------------------------------------------


def test_healthd_add_and_rm_are_each_one_reload_without_errors(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    daemon.start()
    client = connect(daemon)
    since = len(daemon.log())
    where = ["--config-dir", str(daemon.config_dir)]

    tcp = ["--type", "tcp", "--host", "127.0.0.1", "--port", str(svc.port)]
    added = run_cli(["add", "web", *tcp, "--interval", "200ms", *where], daemon.env)
    assert added.returncode == 0, added.stderr
    client.wait_status("web", lambda s: s["state"] == "healthy")
    time.sleep(SETTLE)
    seen = reloads(daemon, since)
    assert [(f["trigger"], f["files"], f["added"]) for f in seen] == [("watch", "web.yaml", "1")]
    assert not daemon.events("config_error"), "the editor's temp file was read"
    assert not [p.name for p in daemon.config_dir.iterdir() if p.name != "web.yaml"]

    since = len(daemon.log())
    removed = run_cli(["rm", "web", *where], daemon.env)
    assert removed.returncode == 0, removed.stderr
    wait_for("web to go", lambda: names(client) == [], detail=daemon.log)
    time.sleep(SETTLE)
    seen = reloads(daemon, since)
    assert [(f["trigger"], f["files"], f["removed"]) for f in seen] == [("watch", "web.yaml", "1")]
    no_sighup(daemon)


# -- the directory itself --------------------------------------------------------------------


def test_the_config_dir_removed_then_made_again_is_watched_again(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc.port)
    daemon.start()
    client = connect(daemon)
    client.wait_status("a", lambda s: s["state"] == "healthy")

    since = len(daemon.log())
    (daemon.config_dir / "a.yaml").unlink()
    daemon.config_dir.rmdir()
    fields = wait_reload(daemon, since, config_errors="1")
    assert (fields["kept"], fields["removed"]) == ("1", "0")  # a gone dir removes nothing
    message = f"{daemon.config_dir}: config directory does not exist"
    assert [e["message"] for e in client.get("/v1/workloads")["config_errors"]] == [message]
    checks = client.get("/v1/status/a")["total_checks"]
    client.wait_status("a", lambda s: s["total_checks"] >= checks + 2)  # still checked

    since = len(daemon.log())
    daemon.config_dir.mkdir()
    write(daemon, "b", "tcp", host="127.0.0.1", port=svc.port)
    wait_reload(daemon, since, added="1")
    wait_for("b alone", lambda: names(client) == ["b"], detail=daemon.log)
    client.wait_status("b", lambda s: s["state"] == "healthy")

    since = len(daemon.log())  # the new dir is watched, not only its parent
    write(daemon, "c", "tcp", host="127.0.0.1", port=svc.port)
    wait_reload(daemon, since, files="c.yaml", added="1")
    no_sighup(daemon)


def test_a_config_dir_that_does_not_exist_yet_is_watched_for(
    daemon: DaemonProc, services: Services
) -> None:
    """Two levels missing at start: the nearest existing ancestor is watched until they come."""
    svc = services.start("tcp")
    daemon.config_dir.rmdir()
    daemon.config_dir = daemon.config_dir / "volt" / "health"
    daemon.start()
    client = connect(daemon)
    assert names(client) == []
    since = len(daemon.log())

    tcp = ["--type", "tcp", "--host", "127.0.0.1", "--port", str(svc.port)]
    where = ["--config-dir", str(daemon.config_dir)]
    added = run_cli(["add", "web", *tcp, *where], daemon.env)  # it makes the missing dirs
    assert added.returncode == 0, added.stderr
    wait_reload(daemon, since, added="1")
    client.wait_status("web", lambda s: s["state"] == "healthy")
    assert client.get("/v1/workloads")["config_errors"] == []
    no_sighup(daemon)


def test_an_unreadable_config_dir_is_picked_up_once_its_mode_is_fixed(
    daemon: DaemonProc, services: Services, require_binary: Callable[[str], str]
) -> None:
    """inotify cannot watch a dir the daemon may not read: its parent is watched instead, and
    the chmod that opens it is a change. Root ignores modes, so the daemon runs without the
    two capabilities that let it (through setpriv), as under a CapabilityBoundingSet."""
    setpriv = require_binary("setpriv")
    if os.geteuid() != 0:
        pytest.fail("this test drops root's capabilities: run it as root")
    svc = services.start("tcp")
    write(daemon, "web", "tcp", host="127.0.0.1", port=svc.port)
    daemon.wrap = lambda argv: [setpriv, "--bounding-set=-dac_override,-dac_read_search", *argv]
    daemon.config_dir.chmod(0o000)
    try:
        daemon.start()
        client = connect(daemon)
        assert names(client) == []
        watching = daemon.events("config_watch")[0]
        assert f"watching={daemon.config_dir.parent}" in watching.split(), watching
        since = len(daemon.log())
        daemon.config_dir.chmod(0o755)
        wait_reload(daemon, since, added="1", config_errors="0")
        client.wait_status("web", lambda s: s["state"] == "healthy")
        since = len(daemon.log())  # and now the dir itself is watched
        write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port)
        wait_reload(daemon, since, files="db.yaml", added="1")
    finally:
        daemon.config_dir.chmod(0o755)
    no_sighup(daemon)


def test_a_symlinked_config_dir_swapped_to_another_target_is_reloaded(
    daemon: DaemonProc, tmp_path: Path, services: Services
) -> None:
    svc = services.start("tcp")
    first, second = tmp_path / "v1", tmp_path / "v2"
    for directory in (first, second):
        directory.mkdir()
    replace_text(first / "a.yaml", tcp_file("a", svc.port))
    replace_text(second / "b.yaml", tcp_file("b", svc.port))
    daemon.config_dir.rmdir()
    daemon.config_dir.symlink_to(first)
    daemon.start()
    client = connect(daemon)
    assert names(client) == ["a"]

    since = len(daemon.log())
    link = tmp_path / "config.new"
    link.symlink_to(second)
    os.replace(link, daemon.config_dir)  # ln -sfn: the link replaced in one rename
    wait_reload(daemon, since, added="1", removed="1")
    assert names(client) == ["b"]

    since = len(daemon.log())  # the new target is watched from now on
    replace_text(second / "c.yaml", tcp_file("c", svc.port))
    wait_reload(daemon, since, files="c.yaml")
    assert names(client) == ["b", "c"]

    since = len(daemon.log())  # and the old one no longer is
    replace_text(first / "old.yaml", tcp_file("old", svc.port))
    time.sleep(SETTLE)
    assert reloads(daemon, since) == []
    no_sighup(daemon)


def test_a_kubernetes_configmap_update_is_reloaded(daemon: DaemonProc, services: Services) -> None:
    """What the kubelet's atomic writer does to a ConfigMap volume: the files live in a
    timestamped dir, the visible NAME.yaml are links through ``..data``, and an update
    swaps ``..data`` in one rename. No NAME.yaml entry of the dir changes."""
    svc = services.start("tcp")
    cfg = daemon.config_dir
    (cfg / "..2026_01").mkdir()
    replace_text(cfg / "..2026_01" / "web.yaml", tcp_file("web", svc.port))
    (cfg / "..data").symlink_to("..2026_01")
    (cfg / "web.yaml").symlink_to("..data/web.yaml")
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")

    since = len(daemon.log())
    (cfg / "..2026_02").mkdir()
    replace_text(cfg / "..2026_02" / "web.yaml", tcp_file("web", svc.port, interval="300ms"))
    (cfg / "..data_tmp").symlink_to("..2026_02")
    os.replace(cfg / "..data_tmp", cfg / "..data")
    for stale in (cfg / "..2026_01").iterdir():
        stale.unlink()
    (cfg / "..2026_01").rmdir()
    fields = wait_reload(daemon, since, changed="1")
    assert "..data" in fields["files"].split(","), fields
    assert client.get("/v1/workloads")["workloads"][0]["interval_seconds"] == 0.3
    no_sighup(daemon)


# -- turned off ------------------------------------------------------------------------------


def test_no_watch_leaves_changes_to_sighup(daemon: DaemonProc, services: Services) -> None:
    svc = services.start("tcp")
    write(daemon, "a", "tcp", host="127.0.0.1", port=svc.port)
    daemon.start("--no-watch")
    client = connect(daemon)
    client.wait_status("a", lambda s: s["state"] == "healthy")
    assert not daemon.events("config_watch")

    write(daemon, "late", "tcp", host="127.0.0.1", port=svc.port)
    (daemon.config_dir / "a.yaml").unlink()
    time.sleep(SETTLE)
    assert names(client) == ["a"], "picked up without a reload"
    assert not daemon.events("config_reloaded")

    since = len(daemon.log())
    os.kill(daemon.pid, signal.SIGHUP)
    line = daemon.wait_event("config_reloaded", since)[0]
    assert {"trigger=SIGHUP", "added=1", "removed=1"} <= set(line.split()), line
    assert names(client) == ["late"]


def test_reload_watch_false_in_the_daemon_config_turns_it_off(daemon: DaemonProc) -> None:
    daemon.daemon_config.write_text("reload:\n  watch: false\n")
    daemon.start()
    client = connect(daemon)
    write(daemon, "late", "exec", target="true")
    time.sleep(SETTLE)
    assert names(client) == []
    assert not daemon.events("config_watch")
    assert not daemon.events("config_reloaded")


def test_the_reload_line_names_the_files_in_json_logs_too(daemon: DaemonProc) -> None:
    """--log-format json, for log shippers: every line is one JSON object, the watcher's
    reload with its trigger and files as fields."""
    daemon.start("--log-format", "json")
    client = connect(daemon)
    write(daemon, "a", "exec", target="true")
    write(daemon, "b", "exec", target="true")
    wait_for("a and b", lambda: names(client) == ["a", "b"], detail=daemon.log)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in daemon.log().splitlines()]

    parsed = wait_for(
        "the reload lines",
        lambda: [d for d in lines() if d["event"] == "config_reloaded"] or None,
        detail=daemon.log,
    )
    assert {d["trigger"] for d in parsed} == {"watch"}
    assert {name for d in parsed for name in d["files"].split(",")} == {"a.yaml", "b.yaml"}
    assert sum(d["added"] for d in parsed) == 2
    watch = next(d for d in lines() if d["event"] == "config_watch")
    assert (watch["mode"], watch["config_dir_exists"]) == ("inotify", True)
