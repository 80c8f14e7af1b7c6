"""The CLI commands that talk to the running daemon (status, check, pause, resume, reload).

Each runs as a user runs it (``python -m healthd ...``) against the real daemon's API (loopback
TCP or its Unix socket) and real services; with no daemon, what it falls back to.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    DaemonProc,
    Services,
    connect,
    free_port,
    run_cli,
    wait_for,
    with_token,
    write,
    write_token,
)

# -- helpers ---------------------------------------------------------------------------------------


def cli(daemon: DaemonProc, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``healthd COMMAND`` for this daemon's status dir and daemon config file."""
    where = ["--status-dir", str(daemon.status_dir), "--daemon-config", str(daemon.daemon_config)]
    if command in ("status", "check"):
        where += ["--config-dir", str(daemon.config_dir)]
    return run_cli([command, *where, *args], daemon.env)


def table(stdout: str) -> dict[str, str]:
    """``healthd status``'s table: workload → state (the header checked, the daemon line left)."""
    lines = stdout.split("\n\n", maxsplit=1)[0].splitlines()
    assert lines[0].split()[:2] == ["WORKLOAD", "STATE"], stdout
    return {line.split()[0]: line.split()[1] for line in lines[1:]}


def output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for a Unix socket (at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hd-cli-") as directory:
        yield Path(directory)


@pytest.fixture
def root() -> None:
    """Root on the API's Unix socket needs no token; other users do."""
    if os.geteuid() != 0:
        pytest.skip("needs root: root on the Unix socket may change things without a token")


# -- status ----------------------------------------------------------------------------------------


def test_status_shows_the_live_state_from_the_api(daemon: DaemonProc, services: Services) -> None:
    web, db = services.start("http"), services.start("tcp")
    write(daemon, "web", "http", host="127.0.0.1", port=web.port, interval=3600)
    write(daemon, "db", "tcp", host="127.0.0.1", port=db.port, interval=3600)
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon, token)
    for name in ("web", "db"):
        client.wait_status(name, lambda s: s["state"] == "healthy" and s["total_checks"] == 1)
    client.post("/v1/workloads/web/pause", {"reason": "db upgrade"})

    shown = cli(daemon, "status")
    assert shown.returncode == 0, output(shown)
    assert "not running" not in shown.stderr
    assert table(shown.stdout) == {"db": "healthy", "web": "paused"}
    assert f"daemon: pid {daemon.pid}, " in shown.stdout

    as_json = cli(daemon, "status", "--json")
    assert as_json.returncode == 0, output(as_json)
    from_cli, from_api = json.loads(as_json.stdout), client.get("/v1/status")
    # uptime is a clock reading: the CLI's was taken first
    assert from_cli["daemon"].pop("uptime_seconds") <= from_api["daemon"].pop("uptime_seconds")
    assert from_cli == from_api  # the API's object, as it is
    assert json.loads(as_json.stdout)["counts"] == {"healthy": 1, "paused": 1}

    one = cli(daemon, "status", "web")
    assert one.returncode == 0, output(one)
    assert table(one.stdout) == {"web": "paused"}
    assert "daemon:" not in one.stdout  # the daemon line only comes with the whole table
    one_json = cli(daemon, "status", "web", "--json")
    assert one_json.returncode == 0, output(one_json)
    entry = json.loads(one_json.stdout)
    assert entry == client.get("/v1/status/web")
    assert (entry["state"], entry["paused"], entry["paused_reason"]) == (
        "paused",
        True,
        "db upgrade",
    )

    unknown = cli(daemon, "status", "nope")
    assert unknown.returncode == 1, output(unknown)
    assert unknown.stderr.strip() == "healthd: no workload named 'nope'"
    assert unknown.stdout == ""


def test_status_after_the_daemon_stopped_shows_the_saved_file(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    write(daemon, "db", "tcp", host="127.0.0.1", port=free_port(), interval=3600, retries=1)
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")
    client.wait_status("db", lambda s: s["state"] == "unhealthy")
    pid = daemon.pid
    assert daemon.terminate() == 0

    shown = cli(daemon, "status")
    assert shown.returncode == 0, output(shown)
    assert "the daemon is not running" in shown.stderr
    assert "showing the saved statuses.json" in shown.stderr
    assert table(shown.stdout) == {"db": "unhealthy", "web": "healthy"}
    assert f"daemon: pid {pid}, " in shown.stdout  # from the daemon.json it left behind

    one = cli(daemon, "status", "db", "--json")
    assert one.returncode == 0, output(one)
    assert "the daemon is not running" in one.stderr
    saved = json.loads(one.stdout)
    assert (saved["workload"], saved["state"]) == ("db", "unhealthy")
    on_disk = daemon.status("db")
    assert on_disk is not None
    assert saved == {**on_disk, "state": "unhealthy"}

    unknown = cli(daemon, "status", "nope")
    assert unknown.returncode == 1, output(unknown)
    assert "no status for workload 'nope'" in unknown.stderr


def test_status_with_an_api_address_nobody_answers_falls_back_to_the_file(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start()
    connect(daemon).wait_status("web", lambda s: s["state"] == "healthy")
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    nobody = f"127.0.0.1:{free_port()}"

    shown = cli(daemon, "status", "--api", f"http://{nobody}")
    assert shown.returncode == 0, output(shown)
    # The daemon of the status dir runs, just not where --api says: the message says both.
    assert f"the daemon (pid {daemon.pid}) runs but its API does not answer" in shown.stderr
    assert f"no daemon answers at http://{nobody}" in shown.stderr
    assert "showing the saved statuses.json" in shown.stderr
    assert table(shown.stdout) == {"web": "healthy"}


def test_without_daemon_json_the_cli_finds_the_api_in_the_daemon_config(
    daemon: DaemonProc, services: Services, short_dir: Path, tmp_path: Path
) -> None:
    sock = short_dir / "healthd.sock"
    port = free_port()
    daemon.daemon_config.write_text(f"api:\n  listen: 127.0.0.1:{port}\n  socket: {sock}\n")
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start("--listen", f"127.0.0.1:{port}")
    connect(daemon).wait_status("web", lambda s: s["state"] == "healthy")
    elsewhere = tmp_path / "other-status"  # no daemon.json here: only the daemon config says
    elsewhere.mkdir()
    common = ["--status-dir", str(elsewhere), "--config-dir", str(daemon.config_dir)]

    shown = run_cli(["status", *common, "--daemon-config", str(daemon.daemon_config)], daemon.env)
    assert shown.returncode == 0, output(shown)
    assert "not running" not in shown.stderr
    assert table(shown.stdout) == {"web": "healthy"}

    # The socket alone (the TCP address moved on): found and used first
    only_socket = tmp_path / "socket.yaml"
    only_socket.write_text(f"api:\n  listen: 127.0.0.1:{free_port()}\n  socket: {sock}\n")
    one = run_cli(["status", *common, "--daemon-config", str(only_socket), "web"], daemon.env)
    assert one.returncode == 0, output(one)
    assert table(one.stdout) == {"web": "healthy"}

    # Neither answers: every address tried is named
    gone = tmp_path / "gone.yaml"
    nobody = f"127.0.0.1:{free_port()}"
    gone.write_text(f"api:\n  listen: {nobody}\n  socket: {short_dir / 'none.sock'}\n")
    fallback = run_cli(["status", *common, "--daemon-config", str(gone)], daemon.env)
    assert fallback.returncode == 0, output(fallback)
    assert "the daemon is not running" in fallback.stderr
    assert f"{short_dir / 'none.sock'} (" in fallback.stderr
    assert f"http://{nobody} (" in fallback.stderr


# -- pause and resume ------------------------------------------------------------------------------


@pytest.mark.usefixtures("root")
def test_pause_and_resume_over_the_unix_socket_need_no_token_for_root(
    daemon: DaemonProc, services: Services, short_dir: Path
) -> None:
    sock = short_dir / "healthd.sock"
    daemon.daemon_config.write_text(f"api:\n  socket: {sock}\n")  # no token: TCP may not change
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")
    assert client.call("POST", "/v1/workloads/web/pause").status == 403  # not over TCP

    paused = cli(daemon, "pause", "web", "--reason", "db upgrade")
    assert paused.returncode == 0, output(paused)
    assert paused.stdout.strip() == "web: paused"
    live = client.get("/v1/status/web")
    assert (live["state"], live["paused"], live["paused_reason"]) == ("paused", True, "db upgrade")
    saved = daemon.wait_status("web", lambda s: s.get("paused") is True)
    assert saved["paused_reason"] == "db upgrade"

    by_path = cli(daemon, "status", "--api", str(sock), "web", "--json")  # --api SOCKET
    assert by_path.returncode == 0, output(by_path)
    assert json.loads(by_path.stdout)["paused_reason"] == "db upgrade"

    resumed = cli(daemon, "resume", "web")
    assert resumed.returncode == 0, output(resumed)
    assert resumed.stdout.strip() == "web: healthy"
    live = client.get("/v1/status/web")
    assert (live["state"], live["paused"]) == ("healthy", False)

    unknown = cli(daemon, "pause", "ghost")
    assert unknown.returncode == 1, output(unknown)
    assert unknown.stderr.strip() == "healthd: no workload named 'ghost'"


def test_pause_over_tcp_uses_the_token_from_the_daemon_config(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    token = with_token(daemon)
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")

    paused = cli(daemon, "pause", "web", "--reason", "db upgrade")
    assert paused.returncode == 0, output(paused)
    assert paused.stdout.strip() == "web: paused"
    live = client.get("/v1/status/web")
    assert (live["state"], live["paused_reason"]) == ("paused", "db upgrade")

    wrong = write_token(tmp_path / "wrong.token", "wrong-" + token)
    refused = cli(daemon, "resume", "web", "--token-file", str(wrong))
    assert refused.returncode == 1, output(refused)
    assert "wrong API token" in refused.stderr
    assert client.get("/v1/status/web")["state"] == "paused"  # nothing changed

    empty = tmp_path / "empty.yaml"  # no token file named anywhere: the API asks for one
    empty.write_text("api: {}\n")
    common = ["--status-dir", str(daemon.status_dir), "--daemon-config", str(empty)]
    tokenless = run_cli(["resume", *common, "web"], daemon.env)
    assert tokenless.returncode == 1, output(tokenless)
    assert "Authorization: Bearer TOKEN" in tokenless.stderr
    assert client.get("/v1/status/web")["state"] == "paused"

    right = write_token(tmp_path / "right.token", token)
    resumed = run_cli(["resume", *common, "--token-file", str(right), "web"], daemon.env)
    assert resumed.returncode == 0, output(resumed)
    assert resumed.stdout.strip() == "web: healthy"
    assert client.get("/v1/status/web")["paused"] is False


def test_pause_without_a_daemon_edits_statuses_json_and_the_next_start_applies_it(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start()
    client = connect(daemon)
    for name in ("web", "db"):
        client.wait_status(name, lambda s: s["state"] == "healthy")
    assert daemon.terminate() == 0
    statuses = daemon.status_dir / "statuses.json"
    before = daemon.status("web")
    assert before is not None
    assert before.get("paused", False) is False

    paused = cli(daemon, "pause", "web", "--reason", "db upgrade")
    assert paused.returncode == 0, output(paused)
    assert paused.stdout.strip() == (
        f"web: paused in {statuses} (the daemon is not running; it applies at start)"
    )
    saved = daemon.status("web")
    assert saved is not None
    assert (saved["paused"], saved["paused_reason"]) == (True, "db upgrade")
    assert saved["paused_at"]
    other = daemon.status("db")
    assert other is not None
    assert other.get("paused", False) is False

    shown = cli(daemon, "status")
    assert shown.returncode == 0, output(shown)
    assert table(shown.stdout) == {"db": "healthy", "web": "paused"}

    ghost = cli(daemon, "pause", "ghost")
    assert ghost.returncode == 1, output(ghost)
    assert f"no status for workload 'ghost' in {statuses}" in ghost.stderr

    daemon.start()
    client = connect(daemon)
    live = client.get("/v1/status/web")
    assert (live["state"], live["paused"], live["paused_reason"]) == ("paused", True, "db upgrade")
    assert client.get("/v1/status/db")["paused"] is False


def test_resume_without_a_daemon_clears_the_saved_pause(daemon: DaemonProc) -> None:
    write(daemon, "web", "tcp", host="127.0.0.1", port=free_port(), interval=3600)
    token = with_token(daemon)
    daemon.start()
    connect(daemon, token).post("/v1/workloads/web/pause", {"reason": "maintenance"})
    daemon.wait_status("web", lambda s: s.get("paused") is True)
    assert daemon.terminate() == 0

    resumed = cli(daemon, "resume", "web")
    assert resumed.returncode == 0, output(resumed)
    assert resumed.stdout.startswith("web: resumed in ")
    saved = daemon.status("web")
    assert saved is not None
    assert saved.get("paused", False) is False
    assert saved.get("paused_reason", "") == ""

    daemon.start()
    assert connect(daemon).get("/v1/status/web")["paused"] is False


def test_a_stale_daemon_json_keeps_the_cli_away_from_other_daemons(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start()
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")
    # Another status dir, whose daemon is gone (its pid no longer runs), with a daemon
    # config naming the address where the fixture's daemon, not its own, answers.
    other = tmp_path / "other-status"
    other.mkdir()
    gone = subprocess.Popen(["true"], env=daemon.env)
    gone.wait()
    (other / "daemon.json").write_text(json.dumps({"pid": gone.pid, "api": {}}))
    saved = daemon.statuses()
    assert saved is not None
    (other / "statuses.json").write_text(json.dumps(saved))
    config = tmp_path / "healthd.yaml"
    config.write_text(f"api:\n  listen: {str(client.where).removeprefix('http://')}\n")
    common = ["--status-dir", str(other), "--daemon-config", str(config)]

    paused = run_cli(["pause", *common, "web"], daemon.env)
    assert paused.returncode == 0, output(paused)
    assert paused.stdout.startswith(f"web: paused in {other / 'statuses.json'} ")
    assert client.get("/v1/status/web")["paused"] is False  # the other daemon was not asked
    assert daemon.status("web") is not None
    shown = run_cli(["status", *common, "--config-dir", str(tmp_path / "none")], daemon.env)
    assert shown.returncode == 0, output(shown)
    assert "the daemon is not running (daemon.json in the status dir names no live" in shown.stderr
    assert table(shown.stdout) == {"web": "paused"}


def test_pause_refuses_to_edit_the_file_of_a_daemon_that_serves_no_api(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    daemon.start("--listen", "")  # no TCP listener, no socket: no API at all
    daemon.wait_status("web", lambda s: s["state"] == "healthy")
    wait_for(
        "daemon.json of this run",
        lambda: json.loads((daemon.status_dir / "daemon.json").read_text())["pid"] == daemon.pid,
        detail=daemon.log,
    )
    assert daemon.api_endpoints() is None

    paused = cli(daemon, "pause", "web")
    assert paused.returncode == 2, output(paused)
    assert f"the daemon (pid {daemon.pid}) runs but its API does not answer" in paused.stderr
    saved = daemon.status("web")
    assert saved is not None
    assert saved.get("paused", False) is False  # a pause written now would be lost

    shown = cli(daemon, "status")
    assert shown.returncode == 0, output(shown)
    assert f"the daemon (pid {daemon.pid}) runs but its API does not answer" in shown.stderr
    assert table(shown.stdout) == {"web": "healthy"}


# -- reload ----------------------------------------------------------------------------------------


def test_reload_reports_what_changed_and_config_errors(
    daemon: DaemonProc, services: Services
) -> None:
    svc = services.start("tcp")
    write(daemon, "web", "tcp", host="127.0.0.1", port=svc.port, interval=3600)
    with_token(daemon)
    daemon.start("--no-watch")  # each reload here is the CLI's, not the watcher's
    client = connect(daemon)
    client.wait_status("web", lambda s: s["state"] == "healthy")

    write(daemon, "db", "tcp", host="127.0.0.1", port=svc.port, interval=3600)
    added = cli(daemon, "reload")
    assert added.returncode == 0, output(added)
    assert added.stdout.splitlines() == ["added: db", "unchanged: 1"]
    assert added.stderr == ""
    client.wait_status("db", lambda s: s["state"] == "healthy")

    broken = daemon.config_dir / "db.yaml"
    broken.write_text(f"workload: db\ntype: tcp\nhost: 127.0.0.1\nport: {svc.port}\ncolour: red\n")
    kept = cli(daemon, "reload")
    assert kept.returncode == 1, output(kept)
    assert kept.stdout.splitlines() == ["kept: db", "unchanged: 1"]
    assert f"config error: {broken}:5: colour: unknown key" in kept.stderr
    assert client.get("/v1/status/db")["monitored"] is True  # still runs on its old config

    assert daemon.terminate() == 0
    stopped = cli(daemon, "reload")
    assert stopped.returncode == 1, output(stopped)
    assert "the daemon is not running" in stopped.stderr
    assert stopped.stdout == ""


def test_reload_names_the_configured_address_when_no_daemon_ever_ran(
    tmp_path: Path, env: dict[str, str]
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    config = tmp_path / "healthd.yaml"
    config.write_text(f"api:\n  listen: {nobody}\n")
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    done = run_cli(["reload", "--status-dir", str(status_dir), "--daemon-config", str(config)], env)
    assert done.returncode == 1, output(done)
    assert "the daemon is not running" in done.stderr
    assert f"no daemon answers at http://{nobody} (" in done.stderr


# -- check -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("root")
def test_check_runs_through_the_daemon_and_locally_when_it_is_stopped(
    daemon: DaemonProc, services: Services, short_dir: Path
) -> None:
    daemon.daemon_config.write_text(f"api:\n  socket: {short_dir / 'healthd.sock'}\n")
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600, retries=5)
    daemon.start()
    client = connect(daemon)
    before = client.wait_status("web", lambda s: s["state"] == "healthy")

    healthy = cli(daemon, "check", "web")
    assert healthy.returncode == 0, output(healthy)
    assert healthy.stdout.startswith("web: healthy (")
    assert healthy.stdout.rstrip().endswith("; state healthy")
    after = client.get("/v1/status/web")
    assert after["total_checks"] == before["total_checks"] + 1  # the daemon ran it

    svc.kill()
    unhealthy = cli(daemon, "check", "web")
    assert unhealthy.returncode == 1, output(unhealthy)
    assert unhealthy.stdout.startswith("web: unhealthy: ")
    assert "connection refused" in unhealthy.stdout.lower()
    failed = client.get("/v1/status/web")
    assert (failed["total_fails"], failed["consecutive_fails"]) == (1, 1)
    assert unhealthy.stdout.rstrip().endswith(f"; state {failed['state']}")
    assert failed["last_error"] in unhealthy.stdout

    unknown = cli(daemon, "check", "ghost")
    assert unknown.returncode == 1, output(unknown)
    assert unknown.stderr.strip() == "healthd: no workload named 'ghost'"

    assert daemon.terminate() == 0
    subprocess.run(svc.start_argv(), env=daemon.env, check=True, timeout=30)  # up again
    local = cli(daemon, "check", "web")
    assert local.returncode == 0, output(local)
    assert local.stderr.startswith("note: the daemon is not running (")
    assert local.stderr.rstrip().endswith("); checking from here")
    assert local.stdout.startswith("web: healthy (")
    assert f"GET http://127.0.0.1:{svc.port}/healthz" in local.stdout  # the local report
    saved = daemon.status("web")
    assert saved is not None
    assert saved["total_checks"] == failed["total_checks"]  # the local check is not recorded


def test_check_over_tcp_needs_the_token(
    daemon: DaemonProc, services: Services, tmp_path: Path
) -> None:
    svc = services.start("http")
    write(daemon, "web", "http", host="127.0.0.1", port=svc.port, interval=3600)
    with_token(daemon)
    daemon.start()
    client = connect(daemon)
    before = client.wait_status("web", lambda s: s["state"] == "healthy")

    checked = cli(daemon, "check", "web")  # the token comes from the daemon config
    assert checked.returncode == 0, output(checked)
    assert checked.stdout.startswith("web: healthy (")
    assert checked.stdout.rstrip().endswith("; state healthy")
    assert client.get("/v1/status/web")["total_checks"] == before["total_checks"] + 1

    empty = tmp_path / "empty.yaml"
    empty.write_text("api: {}\n")
    common = ["--status-dir", str(daemon.status_dir), "--config-dir", str(daemon.config_dir)]
    refused = run_cli(["check", *common, "--daemon-config", str(empty), "web"], daemon.env)
    assert refused.returncode == 1, output(refused)
    assert "Authorization: Bearer TOKEN" in refused.stderr
    assert refused.stdout == ""  # not checked from here instead
    assert client.get("/v1/status/web")["total_checks"] == before["total_checks"] + 1
